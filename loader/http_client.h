// libcurl plumbing shared by the S3 and HTTP(S) sources: request signing (SigV4 through
// libcurl's CURLOPT_AWS_SIGV4, or a bearer token), response-header parsing, S3 error
// bodies, the transient/permanent classification, and concurrent small GETs.
#pragma once

#include <curl/curl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ember::loader {

class AwsCredentialProvider;

// How requests to one store are authenticated. Secrets live only here, in the credential
// provider and in curl handles; nothing that formats an error reads them.
struct HttpAuth {
  enum class Kind { kNone, kSigV4, kBearer };
  Kind kind = Kind::kNone;
  std::shared_ptr<AwsCredentialProvider> aws;  // kSigV4: asked at each request (refreshes)
  std::string region;
  std::string bearer_token;
  std::string ca_bundle;  // CA certificates for TLS; empty: the system store
};

// One object's address: the URL to fetch and the name used in messages. `display`
// never holds a query string (presigned URLs carry their signature there).
struct HttpObject {
  std::string url;
  std::string display;
};

// What the server said about the object in a response's headers.
struct ResponseMeta {
  long status = 0;
  std::string etag;           // without quotes; empty when absent
  std::string last_modified;  // empty when absent
  std::optional<uint64_t> content_length;
  std::optional<uint64_t> range_begin;  // from Content-Range: bytes a-b/total
  std::optional<uint64_t> total_size;
  std::optional<double> retry_after_s;

  // Whether the body is a byte range of the object. Content-Range decides, not the
  // status: some S3 servers (rclone's gofakes3) answer a range with 200 + Content-Range.
  bool is_range() const { return range_begin.has_value(); }
  // The whole object's size: Content-Range's total for a range, else Content-Length.
  std::optional<uint64_t> object_size() const { return is_range() ? total_size : content_length; }
};

struct HttpResponse {
  ResponseMeta meta;
  std::string body;
};

// Calls curl_global_init exactly once.
void EnsureCurlInitialized();

// Sets URL, authentication, timeouts and common options on an easy handle. The
// returned header list (may be null) must outlive the transfer; free it with
// curl_slist_free_all.
curl_slist* ConfigureEasy(CURL* easy, const HttpObject& object, const HttpAuth& auth,
                          long connect_timeout_s);

// Parses one response-header line into `meta` (called from CURLOPT_HEADERFUNCTION).
void ParseHeaderLine(absl::string_view line, ResponseMeta* meta);

// Extracts <Code> and <Message> from an S3 XML error body; empty strings when the
// body is not one.
struct S3Error {
  std::string code;
  std::string message;
};
S3Error ParseS3Error(absl::string_view body);

// Whether a failure is worth retrying: connection-level curl errors, timeouts, HTTP 408,
// 429, 500, 502, 503 and 504, and S3's SlowDown / RequestTimeout / InternalError codes.
bool IsTransientCurlError(CURLcode code);
bool IsTransientHttpStatus(long status, absl::string_view s3_code);

// The permanent-error message for an HTTP failure: names the object, the status and S3
// code, and what to check.
absl::Status HttpFailure(const HttpObject& object, long status, const S3Error& s3,
                         absl::string_view context);

// A GET (optionally a byte range [offset, offset+length)) for a small object.
struct SmallGet {
  HttpObject object;
  std::optional<std::pair<uint64_t, uint64_t>> range;  // offset, length
};

// Runs the GETs concurrently on one curl multi handle, with the given retry budget for
// transient failures. Returns each response (any status) in order, or the first
// transport error that outlived its retries.
absl::StatusOr<std::vector<HttpResponse>> GetConcurrently(const std::vector<SmallGet>& gets,
                                                          const HttpAuth& auth,
                                                          int max_attempts,
                                                          long connect_timeout_s);

// One small synchronous request (STS, credential endpoints, peer manifests): the reply,
// whatever its status; an error only when no reply came (after `attempts` tries on
// connection errors and 5xx). Messages name the method and URL, never a header or the body.
struct HttpRequest {
  HttpRequest(std::string method, std::string url, std::vector<std::string> headers = {},
              long timeout_ms = 5000, int attempts = 3)
      : method(std::move(method)), url(std::move(url)), headers(std::move(headers)),
        timeout_ms(timeout_ms), attempts(attempts) {}
  std::string method;  // GET, POST (with body) or another verb without a body
  std::string url;
  std::vector<std::string> headers;
  long timeout_ms;
  int attempts;
  std::string body;
  std::string ca_bundle;  // empty: the system store
};
struct HttpReply {
  long status = 0;
  std::string body;
};
absl::StatusOr<HttpReply> Perform(const HttpRequest& request);

}  // namespace ember::loader
