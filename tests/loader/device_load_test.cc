// Loads into device memory and verifies every tensor with a device-side checksum
// against the host reference. Skips, saying why, where no GPU is usable.
#include <gtest/gtest.h>

#include "loader/device_memory.h"
#include "loader/model_loader.h"
#include "tests/loader/load_expectations.h"
#include "tests/loader/test_servers.h"

#ifdef EMBER_HAVE_CUDA
#include "kernels/checksum.h"
#endif

namespace ember::loader {
namespace {

using ::ember::testing::MakeTestModel;
using ::ember::testing::TempDir;

TEST(DeviceLoad, LoadsEveryTensorIntoVramByteExact) {
#ifndef EMBER_HAVE_CUDA
  GTEST_SKIP() << "GPU test skipped: built without the CUDA toolkit";
#else
  if (!CudaAvailable()) GTEST_SKIP() << "GPU test skipped: no usable CUDA device or driver";
  TempDir dir;
  const std::string model_dir = dir.path() + "/m";
  ASSERT_TRUE(MakeTestModel(model_dir, {"--layout", "sharded", "--shards", "2", "--misaligned",
                                        "--dtypes", "all", "--total-mb", "64"}));
  LoadOptions options;
  options.target = Target::kDevice;
  options.chunk_bytes = 4 << 20;
  options.staging_bytes = 16 << 20;
  auto model = LoadModel(model_dir, options);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->target, Target::kDevice);
  ::ember::testing::ForEachLoadedTensor(
      *model, model_dir, [](const WeightView& v, const TensorInfo& t, const uint8_t* src) {
        EXPECT_TRUE(v.on_device);
        uint64_t device_sum = 0;
        ASSERT_TRUE(kernels::ByteChecksumDevice(v.data, v.nbytes, &device_sum));
        EXPECT_EQ(device_sum, kernels::ByteChecksumHost(src, t.nbytes())) << t.name;
      });
#endif
}

TEST(DeviceLoad, FallsBackToHostWhenNoGpuIsUsable) {
  if (CudaAvailable()) GTEST_SKIP() << "a GPU is usable here: the fallback path does not apply";
  TempDir dir;
  ASSERT_TRUE(MakeTestModel(dir.path() + "/m", {"--layout", "single", "--total-mb", "1"}));
  LoadOptions options;
  options.target = Target::kDevice;
  auto model = LoadModel(dir.path() + "/m", options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->target, Target::kHost);
  EXPECT_FALSE(model->weights.begin()->second.on_device);
}

}  // namespace
}  // namespace ember::loader
