// How the server reads a request off the wire. proto3 requires string fields to be UTF-8,
// and protobuf's parser rejects a message that breaks the rule; gRPC's generated handlers
// then end the call with UNIMPLEMENTED and no message, which tells a client nothing. So the
// service registers its methods raw (ByteBuffer) and parses with DeserializeRequest: such a
// message is read anyway, the offending text left in place and the field named for
// Utf8Problem, which the service turns into INVALID_ARGUMENT ("prompt: not valid UTF-8
// (byte offset 3)"); bytes that are not protobuf at all are INVALID_ARGUMENT "the request is
// not a valid message".
#pragma once

#include <optional>
#include <string>

#include "google/protobuf/message.h"
#include "grpcpp/impl/codegen/byte_buffer.h"
#include "grpcpp/impl/codegen/status.h"

namespace ember::v1 {

// Parses `buffer` into `message` as described above.
grpc::Status DeserializeRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);

// The field (e.g. "chat.messages[1].content") and problem recorded on a request whose
// text is not UTF-8; nullopt for a well-formed one.
std::optional<std::string> Utf8Problem(const google::protobuf::Message& request);

}  // namespace ember::v1
