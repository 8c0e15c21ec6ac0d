// The engine on the CUDA backend under the host emulation of CUDA (tests/cuda_emulation):
// what only the emulation can observe, namely which kernels a warm-up launched, and what
// only it can fake, namely a GPU the CUDA backend must refuse. Built in the emulated build
// only; CTest runs it under the emulated GPUs named in tests/CMakeLists.txt.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "kernels/backend.h"
#include "tests/engine/random_model.h"
#include "worker/model/engine.h"
#include "worker/model/model_weights.h"

namespace ember::worker {
namespace {

using ::ember::testing::MakeRandomModel;
using ::ember::testing::SmallLlamaConfig;

// The emulated GPU's compute capability (EMBER_CUDA_EMULATION_CC, 9.0 unless set).
int EmulatedMajor() {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 0;
  return prop.major;
}

TEST(EmulatedCudaEngine, WarmUpLaunchesEveryKernelALaterWorkloadUses) {
  if (EmulatedMajor() < 8) GTEST_SKIP() << "the emulated GPU is one the CUDA backend refuses";
  auto backend = kernels::MakeBackend("cuda");
  ASSERT_TRUE(backend.ok()) << backend.status();
  ModelConfig config = SmallLlamaConfig();
  config.max_position_embeddings = 1024;  // past one 512-key partition: split-K attention
  testing::RandomModel model = MakeRandomModel(config, loader::Dtype::kBF16);
  std::vector<kernels::Buffer> device_tensors;  // the weights in device memory, as loaded
  for (auto& [name, view] : model.weights) {
    auto buffer = (*backend)->Allocate(view.nbytes, name);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    ASSERT_TRUE((*backend)->Upload(buffer->data(), view.data, view.nbytes).ok());
    view.data = static_cast<uint8_t*>(buffer->data());
    view.on_device = true;
    device_tensors.push_back(std::move(*buffer));
  }
  auto weights = BindWeights(model.config, model.weights, **backend);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.max_step_tokens = 64;
  options.max_sequences = 16;
  options.kv_blocks = 128;
  auto engine = Engine::Create(model.config, std::move(*weights), backend->get(), options);
  ASSERT_TRUE(engine.ok()) << engine.status();

  ASSERT_TRUE((*engine)->WarmUp().ok());
  EXPECT_EQ((*engine)->kv_cache().free_blocks(), 128) << "the warm-up left a sequence behind";
  const std::set<std::string> warmed = cuda_emulation::LaunchedKernels();

  // A serving mix: prefill chunks of every size up to the step limit, then batches of 1 to
  // 11 sequences decoding together, greedy and sampled.
  const int sequences = 11;
  for (int s = 0; s < sequences; ++s) {
    ASSERT_TRUE((*engine)->AddSequence(s).ok());
    const std::vector<int32_t> prompt(3 + 5 * s, s + 1);
    StepInput in;
    in.sequence = s;
    in.tokens = prompt;
    ASSERT_TRUE((*engine)->Step(std::span<const StepInput>(&in, 1)).ok());
  }
  std::vector<int32_t> next(sequences, 7);
  for (int batch = 1; batch <= sequences; ++batch) {
    std::vector<StepInput> inputs(batch);
    for (int s = 0; s < batch; ++s) {
      inputs[s].sequence = s;
      inputs[s].tokens = std::span<const int32_t>(&next[s], 1);
      if (s % 2 == 1) inputs[s].sampling = {0.8f, 20, 0.9f, 0.0f, 7};
    }
    auto out = (*engine)->Step(inputs);
    ASSERT_TRUE(out.ok()) << out.status();
  }

  std::vector<std::string> unwarmed;
  for (const std::string& name : cuda_emulation::LaunchedKernels()) {
    if (!warmed.count(name)) unwarmed.push_back(name);
  }
  EXPECT_TRUE(unwarmed.empty()) << "first launched after the warm-up (a request would load it): "
                                << ::testing::PrintToString(unwarmed);
}

TEST(EmulatedCudaEngine, WeightsGoWhereTheChosenBackendComputes) {
  // With a GPU older than compute capability 8.0 (EMBER_CUDA_EMULATION_CC=7.5) or none,
  // --backend auto serves on the CPU, so the weights must go to host memory; on a GPU the
  // backend accepts, to the device.
  auto backend = ChooseBackend("auto");
  ASSERT_TRUE(backend.ok()) << backend.status();
  const loader::Target expected =
      (*backend)->is_device() ? loader::Target::kDevice : loader::Target::kHost;
  EXPECT_EQ(LoadTargetFor("auto"), expected)
      << "backend " << (*backend)->name() << " on an emulated GPU of compute capability "
      << EmulatedMajor();
  EXPECT_EQ((*backend)->is_device(), EmulatedMajor() >= 8);
  EXPECT_EQ(LoadTargetFor("cpu"), loader::Target::kHost);
}

}  // namespace
}  // namespace ember::worker
