// One checker for every CUDA runtime call (as TensorRT samples' cuda_call): a failing call throws
// std::runtime_error naming the call, the CUDA error and the source line; pybind11 turns it into
// a Python RuntimeError.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace d2a {

inline void cuda_check(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw std::runtime_error(std::string("CUDA call failed: ") + expr + " -> " +
                           cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                           ") at " + file + ":" + std::to_string(line));
}

}  // namespace d2a

#define D2A_CUDA_CHECK(call) ::d2a::cuda_check((call), #call, __FILE__, __LINE__)
