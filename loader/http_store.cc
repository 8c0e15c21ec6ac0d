// HTTP(S) as a model source: a presigned URL to one .safetensors object, or a base URL
// (such as a Hugging Face Hub resolve URL) under which the model's files are fetched
// by name. HTTP has no listing, so the loader probes for the files it needs.
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/http_streamer.h"
#include "loader/stores.h"

namespace ember::loader {
namespace {

// The host part of a URL ("huggingface.co" for "https://huggingface.co/org/m/...").
absl::string_view HostOf(absl::string_view url) {
  url = url.substr(url.find("://") + 3);
  url = url.substr(0, url.find_first_of("/?#"));
  const size_t at = url.rfind('@');
  if (at != absl::string_view::npos) url = url.substr(at + 1);
  return url.substr(0, url.rfind(':') == absl::string_view::npos ? url.size() : url.rfind(':'));
}

class HttpStore : public ObjectStore {
 public:
  HttpStore(std::string base, std::string query, std::string single, HttpAuth auth)
      : base_(std::move(base)), query_(std::move(query)), single_(std::move(single)),
        auth_(std::move(auth)) {}

  std::string Root() const override { return absl::StrCat(base_, "/", single_); }
  std::string Describe(absl::string_view name) const override {
    return absl::StrCat(base_, "/", name);  // never the query: it may hold a signature
  }

  absl::StatusOr<std::optional<std::vector<ObjectInfo>>> List() override {
    if (single_.empty()) return std::optional<std::vector<ObjectInfo>>();
    // One presigned object: its size and ETag come from a one-byte ranged GET.
    auto read = ReadSmall({SmallRead{single_, 0, 1, false}});
    if (!read.ok()) return read.status();
    ObjectInfo info = (*read)[0].info;
    info.name = single_;
    return std::optional<std::vector<ObjectInfo>>(std::vector<ObjectInfo>{info});
  }

  absl::StatusOr<std::vector<SmallReadResult>> ReadSmall(const std::vector<SmallRead>& reads) override {
    std::vector<HttpObject> objects;
    for (const SmallRead& r : reads) objects.push_back(ObjectFor(r.name));
    return ReadSmallOverHttp(reads, objects, auth_);
  }

  absl::Status Stream(const std::vector<ObjectInfo>& objects, const std::vector<ChunkJob>& jobs,
                      StagingRing& ring, const ChunkConsumer& consume,
                      const StreamOptions& options, StreamCounters& counters,
                      std::atomic<bool>& cancel) override {
    std::vector<HttpObject> http;
    for (const ObjectInfo& o : objects) http.push_back(ObjectFor(o.name));
    return StreamOverHttp(http, objects, jobs, ring, consume, auth_, options, counters, cancel);
  }

 private:
  HttpObject ObjectFor(absl::string_view name) const {
    std::string url = absl::StrCat(base_, "/", UriEncode(name, true));
    if (!query_.empty()) absl::StrAppend(&url, "?", query_);
    return {std::move(url), Describe(name)};
  }

  std::string base_;    // scheme://host/path without the trailing '/'
  std::string query_;   // the presigned URL's query, sent but never shown
  std::string single_;  // the object's name when the URL names one file
  HttpAuth auth_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenHttpStore(absl::string_view uri) {
  absl::string_view url = uri;
  std::string query;
  if (const size_t q = url.find('?'); q != absl::string_view::npos) {
    query = std::string(url.substr(q + 1));
    url = url.substr(0, q);
  }
  if (HostOf(url).empty()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", url, "\": no host in the URL"));
  }
  std::string base(absl::StripSuffix(url, "/"));
  std::string single;
  if (IsSafetensorsName(base)) {
    const size_t cut = base.rfind('/');
    single = base.substr(cut + 1);
    base = base.substr(0, cut);
  } else if (!query.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        base, ": a URL with a query (a presigned URL) must name one .safetensors object"));
  }
  HttpAuth auth;
  // HF_TOKEN goes only to the Hub (or the endpoint HF_ENDPOINT names), never to an
  // arbitrary server.
  const char* token = std::getenv("HF_TOKEN");
  const char* hf_endpoint = std::getenv("HF_ENDPOINT");
  const absl::string_view host = HostOf(base);
  const bool is_hub = host == "huggingface.co" || absl::EndsWith(host, ".huggingface.co") ||
                      host == "hf.co" ||
                      (hf_endpoint && *hf_endpoint && absl::StartsWith(base, hf_endpoint));
  if (token && *token && is_hub) {
    auth.kind = HttpAuth::Kind::kBearer;
    auth.bearer_token = token;
  }
  return std::unique_ptr<ObjectStore>(
      new HttpStore(std::move(base), std::move(query), std::move(single), std::move(auth)));
}

}  // namespace ember::loader
