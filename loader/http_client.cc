// libcurl request setup, header parsing and concurrent small GETs.
#include "loader/http_client.h"

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/aws_credentials.h"
#include "loader/retry_policy.h"
#include "pugixml.hpp"

namespace ember::loader {

void EnsureCurlInitialized() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

curl_slist* ConfigureEasy(CURL* easy, const HttpObject& object, const HttpAuth& auth,
                          long connect_timeout_s) {
  curl_easy_setopt(easy, CURLOPT_URL, object.url.c_str());
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, connect_timeout_s);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);  // Hugging Face resolve URLs redirect
  curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "ember/0.1");
  // Bodies are raw bytes: no transparent decompression that would change offsets.
  curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  curl_slist* headers = nullptr;
  switch (auth.kind) {
    case HttpAuth::Kind::kNone:
      break;
    case HttpAuth::Kind::kSigV4: {
      // libcurl copies string options, so the credentials need not outlive this call.
      const AwsCredentials credentials = auth.aws->Current();
      const std::string provider = absl::StrCat("aws:amz:", auth.region, ":s3");
      curl_easy_setopt(easy, CURLOPT_AWS_SIGV4, provider.c_str());
      curl_easy_setopt(easy, CURLOPT_USERNAME, credentials.access_key.c_str());
      curl_easy_setopt(easy, CURLOPT_PASSWORD, credentials.secret_key.c_str());
      // S3 wants the payload hash header; GETs have no payload to hash.
      headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
      if (!credentials.session_token.empty()) {
        headers = curl_slist_append(
            headers, absl::StrCat("x-amz-security-token: ", credentials.session_token).c_str());
      }
      break;
    }
    case HttpAuth::Kind::kBearer:
      // CURLAUTH_BEARER is never forwarded to another host on a redirect, so the
      // token stays with the Hub and is not sent to its CDN.
      curl_easy_setopt(easy, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
      curl_easy_setopt(easy, CURLOPT_XOAUTH2_BEARER, auth.bearer_token.c_str());
      break;
  }
  if (headers) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  if (!auth.ca_bundle.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, auth.ca_bundle.c_str());
  return headers;
}

void ParseHeaderLine(absl::string_view line, ResponseMeta* meta) {
  line = absl::StripTrailingAsciiWhitespace(line);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new response (after a redirect or 100-continue): forget the previous one.
    *meta = ResponseMeta{};
    return;
  }
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return;
  const std::string name = absl::AsciiStrToLower(line.substr(0, colon));
  absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
  if (name == "etag") {
    absl::ConsumePrefix(&value, "W/");
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    meta->etag = std::string(value);
  } else if (name == "last-modified") {
    meta->last_modified = std::string(value);
  } else if (name == "content-length") {
    uint64_t n;
    if (absl::SimpleAtoi(value, &n)) meta->content_length = n;
  } else if (name == "content-range") {
    // bytes a-b/total  (total may be '*')
    if (!absl::ConsumePrefix(&value, "bytes ")) return;
    const size_t dash = value.find('-');
    const size_t slash = value.find('/');
    if (dash == absl::string_view::npos || slash == absl::string_view::npos) return;
    uint64_t begin, total;
    if (absl::SimpleAtoi(value.substr(0, dash), &begin)) meta->range_begin = begin;
    if (absl::SimpleAtoi(value.substr(slash + 1), &total)) meta->total_size = total;
  } else if (name == "retry-after") {
    double s;
    if (absl::SimpleAtod(value, &s)) meta->retry_after_s = s;
  }
}

S3Error ParseS3Error(absl::string_view body) {
  S3Error error;
  pugi::xml_document doc;
  if (!doc.load_buffer(body.data(), body.size())) return error;
  pugi::xml_node root = doc.child("Error");
  if (!root) return error;
  error.code = root.child_value("Code");
  error.message = root.child_value("Message");
  return error;
}

bool IsTransientCurlError(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

bool IsTransientHttpStatus(long status, absl::string_view s3_code) {
  if (s3_code == "SlowDown" || s3_code == "RequestTimeout" || s3_code == "InternalError" ||
      s3_code == "ServiceUnavailable" || s3_code == "RequestTimeTooSkewed") {
    return true;
  }
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

absl::Status HttpFailure(const HttpObject& object, long status, const S3Error& s3,
                         absl::string_view context) {
  std::string hint;
  if (status == 403 || s3.code == "SignatureDoesNotMatch" || s3.code == "InvalidAccessKeyId" ||
      s3.code == "AccessDenied") {
    hint = "check the credentials (HF_TOKEN, or the AWS credentials the 's3 credentials' log "
           "line names), AWS_REGION and the bucket policy";
  } else if (status == 404 || s3.code == "NoSuchKey" || s3.code == "NoSuchBucket") {
    hint = "check the bucket and key (or URL) and AWS_ENDPOINT_URL";
  } else if (status == 401) {
    hint = "the server wants credentials: set HF_TOKEN or AWS_* credentials";
  } else if (status == 412) {
    hint = "the object changed while it was being read; retry the load";
  } else {
    hint = "check the server and the URL";
  }
  std::string detail = absl::StrCat("HTTP ", status);
  if (!s3.code.empty()) absl::StrAppend(&detail, " ", s3.code);
  if (!s3.message.empty()) absl::StrAppend(&detail, " (", s3.message, ")");
  const absl::StatusCode code = status == 404                 ? absl::StatusCode::kNotFound
                                : status == 403 || status == 401 ? absl::StatusCode::kPermissionDenied
                                                                 : absl::StatusCode::kUnavailable;
  return absl::Status(code, absl::StrCat(object.display, ": ", context, " failed: ", detail,
                                         "; ", hint));
}

namespace {

size_t AppendBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  ParseHeaderLine(absl::string_view(data, size * n), static_cast<ResponseMeta*>(user));
  return size * n;
}

struct SmallTransfer {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  HttpResponse response;
  int attempts = 0;
};

void StartSmall(CURLM* multi, SmallTransfer& t, const SmallGet& get, const HttpAuth& auth,
                long connect_timeout_s) {
  if (t.easy) {
    curl_multi_remove_handle(multi, t.easy);
    curl_easy_reset(t.easy);
  } else {
    t.easy = curl_easy_init();
  }
  curl_slist_free_all(t.headers);
  t.response = HttpResponse{};
  t.headers = ConfigureEasy(t.easy, get.object, auth, connect_timeout_s);
  if (get.range) {
    const std::string range =
        absl::StrCat(get.range->first, "-", get.range->first + get.range->second - 1);
    curl_easy_setopt(t.easy, CURLOPT_RANGE, range.c_str());
  }
  curl_easy_setopt(t.easy, CURLOPT_TIMEOUT, 120L);
  curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t.response.body);
  curl_easy_setopt(t.easy, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(t.easy, CURLOPT_HEADERDATA, &t.response.meta);
  curl_easy_setopt(t.easy, CURLOPT_PRIVATE, &t);
  ++t.attempts;
  curl_multi_add_handle(multi, t.easy);
}

}  // namespace

absl::StatusOr<std::vector<HttpResponse>> GetConcurrently(const std::vector<SmallGet>& gets,
                                                          const HttpAuth& auth,
                                                          int max_attempts,
                                                          long connect_timeout_s) {
  EnsureCurlInitialized();
  RetryPolicy policy;
  policy.max_attempts = max_attempts;
  std::mt19937_64 rng(std::random_device{}());
  CURLM* multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 8L);
  std::vector<SmallTransfer> transfers(gets.size());
  for (size_t i = 0; i < gets.size(); ++i) StartSmall(multi, transfers[i], gets[i], auth, connect_timeout_s);

  absl::Status error;
  int running = static_cast<int>(gets.size());
  while (running > 0 && error.ok()) {
    int still = 0;
    curl_multi_perform(multi, &still);
    CURLMsg* msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      SmallTransfer* t;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
      const size_t i = static_cast<size_t>(t - transfers.data());
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->response.meta.status);
      const CURLcode result = msg->data.result;
      const bool transient =
          result != CURLE_OK
              ? IsTransientCurlError(result)
              : IsTransientHttpStatus(t->response.meta.status,
                                      ParseS3Error(t->response.body).code);
      if (transient && t->attempts < policy.max_attempts) {
        std::this_thread::sleep_for(
            std::chrono::duration<double>(BackoffSeconds(policy, t->attempts, rng)));
        StartSmall(multi, *t, gets[i], auth, connect_timeout_s);
        continue;
      }
      if (result != CURLE_OK) {
        error = absl::UnavailableError(absl::StrCat(gets[i].object.display, ": ",
                                                    curl_easy_strerror(result), " after ",
                                                    t->attempts, " attempt(s)"));
      }
      --running;
    }
    if (running > 0 && error.ok()) curl_multi_poll(multi, nullptr, 0, 100, nullptr);
  }
  std::vector<HttpResponse> responses;
  for (SmallTransfer& t : transfers) {
    if (t.easy) {
      curl_multi_remove_handle(multi, t.easy);
      curl_easy_cleanup(t.easy);
    }
    curl_slist_free_all(t.headers);
    responses.push_back(std::move(t.response));
  }
  curl_multi_cleanup(multi);
  if (!error.ok()) return error;
  return responses;
}

absl::StatusOr<HttpReply> Perform(const HttpRequest& request) {
  EnsureCurlInitialized();
  std::string error;
  for (int attempt = 1; attempt <= request.attempts; ++attempt) {
    CURL* easy = curl_easy_init();
    if (easy == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
    HttpReply reply;
    char curl_error[CURL_ERROR_SIZE] = "";
    curl_slist* headers = nullptr;
    for (const std::string& h : request.headers) headers = curl_slist_append(headers, h.c_str());
    curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, request.timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, request.timeout_ms);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "ember/0.1");
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, AppendBody);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &reply.body);
    if (headers) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    if (!request.ca_bundle.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, request.ca_bundle.c_str());
    if (request.method == "POST") {
      curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.c_str());
      curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(request.body.size()));
    } else if (request.method != "GET") {
      curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    }
    const CURLcode code = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &reply.status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(easy);
    if (code == CURLE_OK && reply.status < 500) return reply;
    error = code != CURLE_OK ? std::string(curl_error[0] ? curl_error : curl_easy_strerror(code))
                             : absl::StrCat("HTTP ", reply.status);
    if (code != CURLE_OK && !IsTransientCurlError(code)) break;
    if (attempt < request.attempts) std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
  }
  return absl::UnavailableError(absl::StrCat(request.method, " ", request.url, ": ", error));
}

}  // namespace ember::loader
