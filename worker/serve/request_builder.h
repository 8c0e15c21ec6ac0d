// Turns an ember.v1 GenerateRequest / TokenizeRequest into what the scheduler runs, checking
// every field: an error is InvalidArgument naming the field and the limit it broke
// (FailedPrecondition when the model cannot serve that kind of input at all).
// Text is UTF-8 by then: proto3's parser checks every string field, and a request that
// breaks the rule arrives marked by proto/ember/v1/request_reader.h (reported here first).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "ember/v1/inference.pb.h"
#include "worker/tokenizer/chat_template.h"
#include "worker/serve/scheduler.h"
#include "worker/tokenizer/tokenizer.h"

namespace ember::worker {

// What validation needs to know about the loaded model.
struct ModelLimits {
  int32_t vocab_size = 0;
  int max_context = 0;
  const Tokenizer* tokenizer = nullptr;        // null: token ids only
  const ChatTemplate* chat_template = nullptr;  // null: no chat
  absl::Status chat_template_error;            // why there is none
};

inline constexpr int kMaxTopLogprobs = 20;
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopBytes = 256;
inline constexpr int kMaxRequestIdBytes = 256;

// The prompt ids of a request's input (prompt, token_ids or chat).
absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request,
                                               const ModelLimits& model);

// The full request; `id` is the client's request_id or a generated one.
absl::StatusOr<GenerationRequest> BuildGenerationRequest(const v1::GenerateRequest& request,
                                                         const ModelLimits& model);

// The ids of a Tokenize request.
absl::StatusOr<std::vector<int32_t>> TokenizeIds(const v1::TokenizeRequest& request,
                                                 const ModelLimits& model);

}  // namespace ember::worker
