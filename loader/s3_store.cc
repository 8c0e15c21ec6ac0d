// S3 (and S3-compatible: MinIO, R2, Ceph, rclone) as a model source: SigV4 through
// libcurl, ListObjectsV2 for prefixes, path-style addressing for custom endpoints.

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "loader/aws_credentials.h"
#include "loader/http_client.h"
#include "loader/http_streamer.h"
#include "loader/status_macros.h"
#include "loader/stores.h"
#include "pugixml.hpp"

namespace ember::loader {
namespace {

class S3Store : public ObjectStore {
 public:
  // Objects live at object_base + key; the bucket is listed at list_url.
  S3Store(std::string bucket, std::string prefix, std::string single, HttpAuth auth,
          std::string object_base, std::string list_url)
      : bucket_(std::move(bucket)),
        prefix_(std::move(prefix)),
        single_(std::move(single)),
        auth_(std::move(auth)),
        object_base_(std::move(object_base)),
        list_url_(std::move(list_url)) {}

  std::string Root() const override {
    return absl::StrCat("s3://", bucket_, "/", prefix_, single_);
  }
  std::string Describe(absl::string_view name) const override {
    return absl::StrCat("s3://", bucket_, "/", prefix_, name);
  }

  // One ListObjectsV2 walk per store: a load through the node cache lists to validate the
  // cache and then reads the manifest from the same listing.
  absl::StatusOr<std::optional<std::vector<ObjectInfo>>> List() override {
    if (listed_.has_value()) return std::optional<std::vector<ObjectInfo>>(*listed_);
    std::vector<ObjectInfo> objects;
    std::string token;
    const std::string list_prefix = prefix_ + single_;
    for (int page = 0; page < 1000; ++page) {
      // SigV4 signs the canonical query string, which must be sorted by name with
      // values percent-encoded; libcurl 7.88 signs the query as given, so it is built
      // here in canonical form.
      std::string query;
      if (!token.empty()) absl::StrAppend(&query, "continuation-token=", UriEncode(token, false), "&");
      absl::StrAppend(&query, "delimiter=%2F&list-type=2&prefix=", UriEncode(list_prefix, false));
      HttpObject listing{absl::StrCat(list_url_, "?", query),
                         absl::StrCat("s3://", bucket_, "/", list_prefix)};
      auto responses = GetConcurrently({SmallGet{listing, std::nullopt}}, auth_, 5, 10);
      if (!responses.ok()) return responses.status();
      const HttpResponse& r = (*responses)[0];
      if (r.meta.status != 200) {
        return HttpFailure(listing, r.meta.status, ParseS3Error(r.body), "ListObjectsV2");
      }
      pugi::xml_document doc;
      if (!doc.load_buffer(r.body.data(), r.body.size())) {
        return absl::DataLossError(absl::StrCat(listing.display, ": ListObjectsV2 answer is not XML"));
      }
      pugi::xml_node result = doc.child("ListBucketResult");
      for (pugi::xml_node c : result.children("Contents")) {
        std::string key = c.child_value("Key");
        if (!absl::StartsWith(key, prefix_)) continue;
        ObjectInfo info;
        info.name = key.substr(prefix_.size());
        if (!single_.empty() && info.name != single_) continue;
        if (!absl::SimpleAtoi(c.child_value("Size"), &info.size)) {
          return absl::DataLossError(absl::StrCat(Describe(info.name), ": listing has no size"));
        }
        absl::string_view etag = c.child_value("ETag");
        absl::ConsumePrefix(&etag, "\"");
        absl::ConsumeSuffix(&etag, "\"");
        info.etag = std::string(etag);
        objects.push_back(std::move(info));
      }
      if (absl::string_view(result.child_value("IsTruncated")) != "true") break;
      token = result.child_value("NextContinuationToken");
      if (token.empty()) break;
    }
    if (objects.empty()) {
      return absl::NotFoundError(absl::StrCat(
          Root(), ": no objects under this ", single_.empty() ? "prefix" : "key",
          "; check the bucket and key and AWS_ENDPOINT_URL"));
    }
    listed_ = std::move(objects);
    return std::optional<std::vector<ObjectInfo>>(*listed_);
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
    return {absl::StrCat(object_base_, UriEncode(prefix_ + std::string(name), true)),
            Describe(name)};
  }

  std::string bucket_;
  std::string prefix_;  // "" or ends in '/'
  std::string single_;  // object name when the URI names one weights file
  HttpAuth auth_;
  std::string object_base_;
  std::string list_url_;
  std::optional<std::vector<ObjectInfo>> listed_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(absl::string_view uri) {
  absl::string_view rest = uri.substr(5);  // after s3://
  const size_t slash = rest.find('/');
  const std::string bucket(rest.substr(0, slash));
  std::string key = slash == absl::string_view::npos ? "" : std::string(rest.substr(slash + 1));
  if (bucket.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", uri, "\": no bucket name (s3://BUCKET/PREFIX)"));
  }
  std::string prefix, single;
  if (IsSafetensorsName(key)) {
    const size_t cut = key.rfind('/');
    prefix = cut == std::string::npos ? "" : key.substr(0, cut + 1);
    single = cut == std::string::npos ? key : key.substr(cut + 1);
  } else {
    prefix = key;
    if (!prefix.empty() && prefix.back() != '/') prefix += '/';
  }

  HttpAuth auth;
  auth.region = AwsRegion();
  EMBER_ASSIGN_OR_RETURN(auth.ca_bundle, AwsCaBundle());
  EMBER_ASSIGN_OR_RETURN(auth.aws, S3Credentials());
  if (auth.aws) auth.kind = HttpAuth::Kind::kSigV4;  // else --no_sign_request: anonymous

  const std::string endpoint = AwsEndpointUrl("S3");
  // Custom endpoints (MinIO, R2, Ceph, rclone) and dotted bucket names use path-style
  // addressing; AWS itself gets virtual-hosted style.
  std::string host;
  bool path_style = true;
  if (!endpoint.empty()) {
    host = std::string(absl::StripSuffix(endpoint, "/"));
  } else if (bucket.find('.') == std::string::npos) {
    host = absl::StrCat("https://", bucket, ".s3.", auth.region, ".amazonaws.com");
    path_style = false;
  } else {
    host = absl::StrCat("https://s3.", auth.region, ".amazonaws.com");
  }
  std::string list_url = path_style ? absl::StrCat(host, "/", bucket) : absl::StrCat(host, "/");
  std::string object_base = path_style ? absl::StrCat(host, "/", bucket, "/") : absl::StrCat(host, "/");
  return std::unique_ptr<ObjectStore>(new S3Store(bucket, std::move(prefix), std::move(single),
                                                  std::move(auth), std::move(object_base),
                                                  std::move(list_url)));
}

}  // namespace ember::loader
