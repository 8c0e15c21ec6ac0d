// Expectations on loaded models.
#include "tests/loader/load_expectations.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "loader/peer.h"
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

void ExpectServedByteExact(const loader::LoadedModel& model, const std::string& model_dir) {
  ASSERT_NE(model.served, nullptr);
  ASSERT_EQ(model.served->objects().size(), model.weight_files.size());
  for (size_t f = 0; f < model.weight_files.size(); ++f) {
    const std::string want = ReadFile(model_dir + "/" + model.weight_files[f]);
    const loader::PeerObject& o = model.served->objects()[f];
    ASSERT_EQ(o.info.size, want.size());
    const auto* bytes = reinterpret_cast<const uint8_t*>(want.data());
    for (size_t b = 0; b < o.block_crc.size(); ++b) {
      const uint64_t at = o.data_start + b * loader::kPeerBlockBytes;
      const uint64_t n = std::min<uint64_t>(loader::kPeerBlockBytes, want.size() - at);
      ASSERT_EQ(o.block_crc[b], loader::Crc32(bytes + at, n)) << "block " << b << " of " << o.info.name;
    }
    // Uneven pieces that cross the header, tensor and block boundaries.
    std::string got(want.size(), '\0');
    for (uint64_t at = 0, step = 777; at < want.size(); at += step, step = step * 3 % 1000003 + 1) {
      const uint64_t n = std::min<uint64_t>(step, want.size() - at);
      ASSERT_TRUE(model.served->Read(static_cast<int>(f), at, n,
                                     reinterpret_cast<uint8_t*>(got.data()) + at).ok());
    }
    ASSERT_TRUE(got == want) << o.info.name << " read back differs from the source";
    EXPECT_FALSE(model.served->Read(static_cast<int>(f), want.size() - 1, 2,
                                    reinterpret_cast<uint8_t*>(got.data())).ok());
  }
}

}  // namespace ember::testing
