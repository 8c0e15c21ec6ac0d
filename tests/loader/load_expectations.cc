// Expectations on loaded models.
#include "tests/loader/load_expectations.h"

#include <gtest/gtest.h>

#include <cstring>

#include "tests/loader/test_servers.h"

namespace ember::testing {

void ForEachLoadedTensor(
    const loader::LoadedModel& model, const std::string& model_dir,
    const std::function<void(const loader::WeightView&, const loader::TensorInfo&,
                             const uint8_t* source)>& check) {
  ASSERT_FALSE(model.weights.empty());
  size_t checked = 0;
  for (const std::string& file : model.weight_files) {
    const std::string bytes = ReadFile(model_dir + "/" + file);
    auto header = loader::ParseSafetensorsPrefix(bytes, bytes.size(), file);
    ASSERT_TRUE(header.ok()) << header.status();
    for (const loader::TensorInfo& t : header->tensors) {
      const loader::WeightView* view = model.Find(t.name);
      ASSERT_NE(view, nullptr) << t.name;
      EXPECT_EQ(view->file, file);
      EXPECT_EQ(view->dtype, t.dtype) << t.name;
      EXPECT_EQ(view->shape, t.shape) << t.name;
      ASSERT_EQ(view->nbytes, t.nbytes()) << t.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(view->data) % 256, 0u) << t.name;
      check(*view, t,
            reinterpret_cast<const uint8_t*>(bytes.data() + header->data_start() + t.begin));
      ++checked;
    }
  }
  EXPECT_EQ(checked, model.weights.size());
}

void ExpectByteExact(const loader::LoadedModel& model, const std::string& model_dir) {
  ForEachLoadedTensor(model, model_dir,
                      [](const loader::WeightView& view, const loader::TensorInfo& t,
                         const uint8_t* source) {
                        EXPECT_FALSE(view.on_device) << t.name;
                        ASSERT_EQ(0, std::memcmp(view.data, source, t.nbytes()))
                            << "bytes differ in " << t.name;
                      });
}

}  // namespace ember::testing
