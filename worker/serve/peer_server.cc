#include "worker/serve/peer_server.h"

#include <microhttpd.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/log.h"

namespace ember::worker {

struct PeerServer::State {
  MHD_Daemon* daemon = nullptr;
  std::string token;
  std::mutex mu;
  std::shared_ptr<const loader::ServedModel> model;
  std::string manifest;  // the model's manifest, rendered once
  ~State() {
    if (daemon != nullptr) MHD_stop_daemon(daemon);
  }
};

namespace {

constexpr char kObjects[] = "/v1/peer/objects/";

// Compares without leaking where the first difference is (the length is no secret).
bool SameSecret(absl::string_view presented, absl::string_view token) {
  if (presented.size() != token.size() || token.empty()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < token.size(); ++i) diff |= presented[i] ^ token[i];
  return diff == 0;
}

MHD_Result Reply(MHD_Connection* connection, unsigned status, const std::string& body,
                 const char* type = "text/plain; charset=utf-8") {
  MHD_Response* response =
      MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                      MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(response, "Content-Type", type);
  const MHD_Result result = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return result;
}

// "bytes=A-B", "bytes=A-" or "bytes=-N" against a file of `size` bytes: [begin, end).
bool ParseRange(absl::string_view header, uint64_t size, uint64_t* begin, uint64_t* end) {
  if (!absl::ConsumePrefix(&header, "bytes=") || header.find(',') != absl::string_view::npos) {
    return false;
  }
  const size_t dash = header.find('-');
  if (dash == absl::string_view::npos) return false;
  const absl::string_view first = header.substr(0, dash), last = header.substr(dash + 1);
  uint64_t a = 0, b = 0;
  if (first.empty()) {  // the last N bytes
    if (!absl::SimpleAtoi(last, &b) || b == 0) return false;
    *begin = size - std::min(size, b);
    *end = size;
  } else {
    if (!absl::SimpleAtoi(first, &a) || a >= size) return false;
    if (!last.empty() && (!absl::SimpleAtoi(last, &b) || b < a)) return false;
    *begin = a;
    *end = last.empty() ? size : std::min(size, b + 1);
  }
  return *begin < *end;
}

struct Body {
  std::shared_ptr<const loader::ServedModel> model;
  int file;
  uint64_t begin;
};

ssize_t ReadBody(void* cls, uint64_t pos, char* buf, size_t max) {
  const Body& body = *static_cast<Body*>(cls);
  const loader::PeerObject& o = body.model->objects()[body.file];
  const uint64_t n = std::min<uint64_t>(max, o.info.size - (body.begin + pos));
  const absl::Status read =
      body.model->Read(body.file, body.begin + pos, n, reinterpret_cast<uint8_t*>(buf));
  if (!read.ok()) {
    LogWarning("peer", "a range could not be read", {{"error", std::string(read.message())}});
    return MHD_CONTENT_READER_END_WITH_ERROR;
  }
  return static_cast<ssize_t>(n);
}

MHD_Result Answer(void* cls, MHD_Connection* connection, const char* url, const char* method,
                  const char* /*version*/, const char* /*upload_data*/, size_t* upload_size,
                  void** /*state*/) {
  PeerServer::State& state = *static_cast<PeerServer::State*>(cls);
  *upload_size = 0;
  if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0) {
    return Reply(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
  }
  const char* auth = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
  absl::string_view presented = auth == nullptr ? "" : auth;
  if (!absl::ConsumePrefix(&presented, "Bearer ") || !SameSecret(presented, state.token)) {
    return Reply(connection, MHD_HTTP_FORBIDDEN, "forbidden: a valid peer token is required\n");
  }
  std::shared_ptr<const loader::ServedModel> model;
  std::string manifest;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    model = state.model;
    if (std::strcmp(url, "/v1/peer/manifest") == 0) manifest = state.manifest;
  }
  if (model == nullptr) {
    return Reply(connection, MHD_HTTP_SERVICE_UNAVAILABLE, "the model is not loaded yet\n");
  }
  if (!manifest.empty()) return Reply(connection, MHD_HTTP_OK, manifest, "application/json");
  absl::string_view path = url;
  const int file = absl::ConsumePrefix(&path, kObjects) ? model->Find(path) : -1;
  if (file < 0) return Reply(connection, MHD_HTTP_NOT_FOUND, "not found\n");
  const loader::ObjectInfo& info = model->objects()[file].info;
  uint64_t begin = 0, end = info.size;
  const char* range = MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Range");
  if (range != nullptr && !ParseRange(range, info.size, &begin, &end)) {
    MHD_Response* response = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(response, "Content-Range", absl::StrCat("bytes */", info.size).c_str());
    const MHD_Result result =
        MHD_queue_response(connection, MHD_HTTP_RANGE_NOT_SATISFIABLE, response);
    MHD_destroy_response(response);
    return result;
  }
  MHD_Response* response = MHD_create_response_from_callback(
      end - begin, 1 << 20, &ReadBody, new Body{model, file, begin},
      [](void* body) { delete static_cast<Body*>(body); });
  MHD_add_response_header(response, "Content-Type", "application/octet-stream");
  MHD_add_response_header(response, "Accept-Ranges", "bytes");
  if (!info.etag.empty()) {
    MHD_add_response_header(response, "ETag", absl::StrCat("\"", info.etag, "\"").c_str());
  }
  if (!info.last_modified.empty()) {
    MHD_add_response_header(response, "Last-Modified", info.last_modified.c_str());
  }
  if (range != nullptr) {
    MHD_add_response_header(
        response, "Content-Range",
        absl::StrCat("bytes ", begin, "-", end - 1, "/", info.size).c_str());
  }
  const MHD_Result result = MHD_queue_response(
      connection, range != nullptr ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, response);
  MHD_destroy_response(response);
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PeerServer>> PeerServer::Start(int port, std::string token) {
  if (token.empty()) return absl::InvalidArgumentError("peer serving needs a token");
  auto server = std::unique_ptr<PeerServer>(new PeerServer());
  server->state_ = std::make_unique<State>();
  server->state_->token = std::move(token);
  server->state_->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG,
      static_cast<uint16_t>(port), nullptr, nullptr, &Answer, server->state_.get(),
      MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
  if (server->state_->daemon == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("peer serving: cannot listen on port ", port, " (in use, or not permitted)"));
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(server->state_->daemon, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : port;
  return server;
}

void PeerServer::SetModel(std::shared_ptr<const loader::ServedModel> model) {
  std::string manifest = model ? model->Manifest().dump() : "";
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->model = std::move(model);
  state_->manifest = std::move(manifest);
}

PeerServer::~PeerServer() = default;

}  // namespace ember::worker
