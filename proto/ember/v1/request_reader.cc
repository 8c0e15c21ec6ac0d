#include "ember/v1/request_reader.h"

#include <vector>

#include "google/protobuf/descriptor.h"
#include "grpcpp/impl/codegen/proto_buffer_reader.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "google/protobuf/unknown_field_set.h"
#include "common/utf8.h"

namespace ember::v1 {
namespace {

// Outside the message's field numbers (and below protobuf's reserved 19000-19999).
constexpr int kUtf8ProblemField = 18999;

// Walks `fields` (a message's wire form) along `descriptor`, looking at every string field
// (recursing into message fields); the first one that is not UTF-8 is named in `problem`.
bool FindProblem(const google::protobuf::UnknownFieldSet& fields,
                 const google::protobuf::Descriptor* descriptor, const std::string& prefix,
                 std::string* problem) {
  using google::protobuf::FieldDescriptor;
  std::vector<int> seen(descriptor->field_count(), 0);
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& f = fields.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* fd = descriptor->FindFieldByNumber(f.number());
    if (fd == nullptr) continue;
    std::string name = prefix + fd->name();
    if (fd->is_repeated()) name += "[" + std::to_string(seen[fd->index()]++) + "]";
    if (fd->type() == FieldDescriptor::TYPE_STRING) {
      if (auto at = worker::utf8::FindInvalid(f.length_delimited()); at.has_value()) {
        *problem = name + ": not valid UTF-8 (byte offset " + std::to_string(*at) + ")";
        return true;
      }
    } else if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      google::protobuf::UnknownFieldSet nested;
      if (nested.ParseFromString(f.length_delimited()) &&
          FindProblem(nested, fd->message_type(), name + ".", problem)) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

std::optional<std::string> Utf8Problem(const google::protobuf::Message& request) {
  const auto& unknown = request.GetReflection()->GetUnknownFields(request);
  for (int i = 0; i < unknown.field_count(); ++i) {
    if (unknown.field(i).number() == kUtf8ProblemField &&
        unknown.field(i).type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      return unknown.field(i).length_delimited();
    }
  }
  return std::nullopt;
}

grpc::Status DeserializeRequest(const grpc::ByteBuffer& raw, google::protobuf::Message* message) {
  // The usual path first, gRPC's zero-copy reader on a copy that shares the slices; the
  // bytes are gathered only for a request that fails to parse.
  grpc::ByteBuffer attempt(raw);
  if (grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&attempt, message)
          .ok()) {
    return grpc::Status::OK;
  }
  std::vector<grpc::Slice> slices;
  if (!raw.Dump(&slices).ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "cannot read the request");
  }
  std::string wire;
  for (const grpc::Slice& s : slices) wire.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // Well-formed protobuf with non-UTF-8 text, or garbage.
  google::protobuf::UnknownFieldSet fields;
  std::string problem;
  if (!fields.ParseFromString(wire) ||
      !FindProblem(fields, message->GetDescriptor(), "", &problem)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the request is not a valid message");
  }
  message->Clear();
  message->GetReflection()->MutableUnknownFields(message)->AddLengthDelimited(kUtf8ProblemField,
                                                                              problem);
  return grpc::Status::OK;
}

}  // namespace ember::v1
