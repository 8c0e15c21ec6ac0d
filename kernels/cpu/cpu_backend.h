// The CPU backend: host memory, the reference ops of kernels/cpu/ run synchronously.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace ember::kernels {

std::unique_ptr<Backend> MakeCpuBackend();

}  // namespace ember::kernels
