// How the server reads GenerateRequest and TokenizeRequest off the wire. proto3 requires
// string fields to be UTF-8, and protobuf's parser rejects a message that breaks the rule;
// gRPC then ends the call with UNIMPLEMENTED and no message, which tells a client nothing.
// These traits parse such a message anyway, leaving the offending text in place and naming
// the field in a marker that the service turns into INVALID_ARGUMENT ("prompt: not valid
// UTF-8 (byte offset 3)"). Messages that are not protobuf at all still fail to parse.
//
// This header is force-included (-include) into every translation unit that links
// ember_proto, so all of them agree on the specialization (the ODR).
#pragma once

#include <optional>
#include <string>

#include "ember/v1/inference.pb.h"
#include "grpcpp/impl/codegen/byte_buffer.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/codegen/serialization_traits.h"
#include "grpcpp/impl/codegen/status.h"

namespace ember::v1 {

// The field (e.g. "chat.messages[1].content") and problem recorded on a request whose
// text is not UTF-8; nullopt for a well-formed one.
std::optional<std::string> Utf8Problem(const google::protobuf::Message& request);

namespace internal {
grpc::Status DeserializeChecked(grpc::ByteBuffer* buffer, google::protobuf::Message* message);
}  // namespace internal

}  // namespace ember::v1

namespace ember::v1::internal {

// Serialization as for any protobuf message; deserialization through DeserializeChecked.
template <class Request>
class CheckedRequestTraits {
 public:
  static grpc::Status Serialize(const grpc::protobuf::MessageLite& msg, grpc::ByteBuffer* bb,
                                bool* own_buffer) {
    return grpc::GenericSerialize<grpc::ProtoBufferWriter, Request>(msg, bb, own_buffer);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* buffer, grpc::protobuf::MessageLite* msg) {
    return DeserializeChecked(buffer, static_cast<Request*>(msg));
  }
};

}  // namespace ember::v1::internal

namespace grpc {

template <>
class SerializationTraits<ember::v1::GenerateRequest, void>
    : public ember::v1::internal::CheckedRequestTraits<ember::v1::GenerateRequest> {};
template <>
class SerializationTraits<ember::v1::TokenizeRequest, void>
    : public ember::v1::internal::CheckedRequestTraits<ember::v1::TokenizeRequest> {};

}  // namespace grpc
