// Times the per-step recurrent matrix product of an LSTM, h [B, out] x R [out, 4u], with each
// candidate library. Built and run by benchmarks/lstm_kernel_spike.py; prints one line per
// candidate and shape: "<name> <B> <out> <4u> <median microseconds>".
//
// MKL and oneDNN are loaded with dlopen (their paths come from the command line), so the program
// builds without them and TensorFlow's own copy of oneDNN is never in the same process.

#define EIGEN_USE_THREADS

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "unsupported/Eigen/CXX11/Tensor"
#include "unsupported/Eigen/CXX11/ThreadPool"

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// CBLAS row-major = 101, no transpose = 111.
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                            int, float, float*, int);
using MklSetThreads = void (*)(int);
using DnnlSgemm = int (*)(char, char, long, long, long, float, const float*, long, const float*,
                          long, float, float*, long);

double MedianMicros(const std::function<void()>& run, int reps) {
  for (int i = 0; i < 20; ++i) run();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) run();
    times.push_back(std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now() - start).count() / 10);
  }
  std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
  return times[reps / 2];
}

int main(int argc, char** argv) {
  const std::string mkl_path = argc > 1 ? argv[1] : "";
  const std::string dnnl_path = argc > 2 ? argv[2] : "";
  const int reps = argc > 3 ? std::atoi(argv[3]) : 51;
  CblasSgemm cblas_sgemm = nullptr;
  MklSetThreads mkl_set_threads = nullptr;
  if (!mkl_path.empty()) {
    void* mkl = dlopen(mkl_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (mkl) {
      cblas_sgemm = reinterpret_cast<CblasSgemm>(dlsym(mkl, "cblas_sgemm"));
      mkl_set_threads = reinterpret_cast<MklSetThreads>(dlsym(mkl, "MKL_Set_Num_Threads"));
    } else {
      std::fprintf(stderr, "mkl: %s\n", dlerror());
    }
  }
  DnnlSgemm dnnl_sgemm = nullptr;
  if (!dnnl_path.empty()) {
    void* dnnl = dlopen(dnnl_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dnnl) {
      dnnl_sgemm = reinterpret_cast<DnnlSgemm>(dlsym(dnnl, "dnnl_sgemm"));
    } else {
      std::fprintf(stderr, "dnnl: %s\n", dlerror());
    }
  }
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  const int shapes[][2] = {{20, 200}, {20, 650}, {64, 64}};
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (const auto& shape : shapes) {
    const int b = shape[0], out = shape[1], n = 4 * shape[1];
    std::vector<float> h(b * out), r(out * n), z(b * n);
    for (auto& v : h) v = normal(rng);
    for (auto& v : r) v = normal(rng);
    auto report = [&](const char* name, const std::function<void()>& run) {
      std::printf("%s %d %d %d %.2f\n", name, b, out, n, MedianMicros(run, reps));
      std::fflush(stdout);
    };
    Eigen::Map<const Matrix> mh(h.data(), b, out), mr(r.data(), out, n);
    Eigen::Map<Matrix> mz(z.data(), b, n);
    report("eigen_matrix_1thread", [&] { mz.noalias() = mh * mr; });
    Eigen::TensorMap<Eigen::Tensor<const float, 2, Eigen::RowMajor>> th(h.data(), b, out),
        tr(r.data(), out, n);
    Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> tz(z.data(), b, n);
    Eigen::array<Eigen::IndexPair<int>, 1> dims = {Eigen::IndexPair<int>(1, 0)};
    report("eigen_tensor_pool2", [&] { tz.device(device) = th.contract(tr, dims); });
    if (cblas_sgemm) {
      for (int threads : {1, 2}) {
        if (mkl_set_threads) mkl_set_threads(threads);
        report(threads == 1 ? "mkl_cblas_sgemm_1thread" : "mkl_cblas_sgemm_2threads", [&] {
          cblas_sgemm(101, 111, 111, b, n, out, 1.0f, h.data(), out, r.data(), n, 0.0f, z.data(),
                      n);
        });
      }
    }
    if (dnnl_sgemm) {
      report("onednn_dnnl_sgemm", [&] {
        dnnl_sgemm('N', 'N', b, n, out, 1.0f, h.data(), out, r.data(), n, 0.0f, z.data(), n);
      });
    }
  }
  return 0;
}
