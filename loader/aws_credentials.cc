// The AWS credential lookup (see aws_credentials.h for the order and the environment).
#include "loader/aws_credentials.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "loader/http_client.h"
#include "loader/log.h"
#include "loader/stores.h"
#include "loader/status_macros.h"
#include "nlohmann/json.hpp"
#include "pugixml.hpp"

namespace ember::loader {

// One place credentials come from: fetches them again on refresh.
class AwsCredentialSource {
 public:
  explicit AwsCredentialSource(std::string name) : name_(std::move(name)) {}
  virtual ~AwsCredentialSource() = default;
  virtual absl::StatusOr<AwsCredentials> Fetch() = 0;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

namespace {

constexpr absl::Duration kRefreshAhead = absl::Minutes(5);
constexpr absl::Duration kRetryFailedRefresh = absl::Seconds(10);

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, " ", path, " cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A request to STS or a credential endpoint, with AWS_CA_BUNDLE for TLS.
absl::StatusOr<HttpReply> CallAws(HttpRequest request) {
  EMBER_ASSIGN_OR_RETURN(request.ca_bundle, AwsCaBundle());
  return Perform(request);
}

absl::StatusOr<absl::Time> ParseExpiration(absl::string_view text, absl::string_view where) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, text, &t, &err)) {
    return absl::DataLossError(
        absl::StrCat(where, ": Expiration \"", text, "\" is not an RFC 3339 time"));
  }
  return t;
}

// The JSON the container and metadata endpoints answer with.
absl::StatusOr<AwsCredentials> CredentialsFromJson(absl::string_view body, absl::string_view where) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::DataLossError(absl::StrCat(where, ": the answer is not JSON"));
  if (j.contains("Code") && j["Code"] != "Success") {
    return absl::PermissionDeniedError(
        absl::StrCat(where, ": Code \"", j["Code"].is_string() ? j["Code"].get<std::string>() : "?",
                     "\" instead of \"Success\""));
  }
  AwsCredentials c;
  for (auto [field, out] : {std::pair{"AccessKeyId", &c.access_key},
                            std::pair{"SecretAccessKey", &c.secret_key},
                            std::pair{"Token", &c.session_token}}) {
    if (!j.contains(field) || !j[field].is_string() || j[field].get<std::string>().empty()) {
      if (std::string_view(field) == "Token") continue;
      return absl::DataLossError(absl::StrCat(where, ": the answer has no ", field));
    }
    *out = j[field].get<std::string>();
  }
  if (j.contains("Expiration") && j["Expiration"].is_string()) {
    EMBER_ASSIGN_OR_RETURN(c.expiration,
                           ParseExpiration(j["Expiration"].get<std::string>(), where));
  }
  return c;
}

std::string FormEncode(absl::string_view s) { return UriEncode(s, /*keep_slash=*/false); }

// --- The sources ----------------------------------------------------------------------------

class StaticSource : public AwsCredentialSource {
 public:
  StaticSource(std::string name, AwsCredentials c)
      : AwsCredentialSource(std::move(name)), c_(std::move(c)) {}
  absl::StatusOr<AwsCredentials> Fetch() override { return c_; }

 private:
  AwsCredentials c_;
};

class WebIdentitySource : public AwsCredentialSource {
 public:
  WebIdentitySource(std::string role_arn, std::string token_file, std::string session_name,
                    std::string sts_url)
      : AwsCredentialSource(absl::StrCat("web identity (AWS_ROLE_ARN=", role_arn, ", STS at ",
                                         sts_url, ")")),
        role_arn_(std::move(role_arn)),
        token_file_(std::move(token_file)),
        session_name_(std::move(session_name)),
        sts_url_(std::move(sts_url)) {}

  absl::StatusOr<AwsCredentials> Fetch() override {
    std::string token;
    EMBER_ASSIGN_OR_RETURN(token, ReadFile(token_file_, "AWS_WEB_IDENTITY_TOKEN_FILE"));
    token = std::string(absl::StripAsciiWhitespace(token));
    if (token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("AWS_WEB_IDENTITY_TOKEN_FILE ", token_file_, " is empty"));
    }
    // AssumeRoleWithWebIdentity is not signed: the token is the proof.
    HttpRequest call("POST", sts_url_, {"Content-Type: application/x-www-form-urlencoded"});
    call.body = absl::StrCat("Action=AssumeRoleWithWebIdentity&Version=2011-06-15",
                             "&RoleArn=", FormEncode(role_arn_),
                             "&RoleSessionName=", FormEncode(session_name_),
                             "&WebIdentityToken=", FormEncode(token));
    HttpReply reply;
    EMBER_ASSIGN_OR_RETURN(reply, CallAws(call));
    pugi::xml_document doc;
    doc.load_buffer(reply.body.data(), reply.body.size());
    if (reply.status != 200) {
      pugi::xml_node e = doc.child("ErrorResponse").child("Error");
      return absl::PermissionDeniedError(absl::StrCat(
          "STS AssumeRoleWithWebIdentity: HTTP ", reply.status, " ", e.child_value("Code"),
          e.child_value("Message")[0] ? absl::StrCat(" (", e.child_value("Message"), ")") : ""));
    }
    pugi::xml_node c = doc.child("AssumeRoleWithWebIdentityResponse")
                           .child("AssumeRoleWithWebIdentityResult")
                           .child("Credentials");
    AwsCredentials out{c.child_value("AccessKeyId"), c.child_value("SecretAccessKey"),
                       c.child_value("SessionToken")};
    if (out.access_key.empty() || out.secret_key.empty()) {
      return absl::DataLossError("STS AssumeRoleWithWebIdentity: the answer has no Credentials");
    }
    EMBER_ASSIGN_OR_RETURN(out.expiration,
                           ParseExpiration(c.child_value("Expiration"), "STS"));
    return out;
  }

 private:
  std::string role_arn_, token_file_, session_name_, sts_url_;
};

class ContainerSource : public AwsCredentialSource {
 public:
  ContainerSource(std::string url, std::string token, std::string token_file)
      : AwsCredentialSource(absl::StrCat("container credentials (", url, ")")),
        url_(std::move(url)),
        token_(std::move(token)),
        token_file_(std::move(token_file)) {}

  absl::StatusOr<AwsCredentials> Fetch() override {
    HttpRequest call("GET", url_, {}, /*timeout_ms=*/2000);
    std::string token = token_;
    if (!token_file_.empty()) {  // read each time: EKS Pod Identity rotates it
      EMBER_ASSIGN_OR_RETURN(token, ReadFile(token_file_, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"));
      token = std::string(absl::StripAsciiWhitespace(token));
    }
    if (!token.empty()) call.headers.push_back(absl::StrCat("Authorization: ", token));
    HttpReply reply;
    EMBER_ASSIGN_OR_RETURN(reply, CallAws(call));
    if (reply.status != 200) {
      return absl::PermissionDeniedError(absl::StrCat(
          "HTTP ", reply.status,
          reply.status == 401 || reply.status == 403
              ? "; check AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (or _TOKEN)"
              : ""));
    }
    return CredentialsFromJson(reply.body, "the container credentials endpoint");
  }

 private:
  std::string url_, token_, token_file_;
};

class MetadataSource : public AwsCredentialSource {
 public:
  explicit MetadataSource(std::string endpoint)
      : AwsCredentialSource(absl::StrCat("instance metadata (", endpoint, ", IMDSv2)")),
        endpoint_(std::move(endpoint)) {}

  // Unavailable when nothing answers at the endpoint (not on EC2): the lookup goes on.
  absl::StatusOr<AwsCredentials> Fetch() override {
    // As the SDKs do: one attempt of one second, as off EC2 nothing answers.
    HttpRequest token_call("PUT", absl::StrCat(endpoint_, "/latest/api/token"),
                           {"X-aws-ec2-metadata-token-ttl-seconds: 21600"}, /*timeout_ms=*/1000,
                           /*attempts=*/1);
    HttpReply token;
    EMBER_ASSIGN_OR_RETURN(token, CallAws(token_call));
    if (token.status != 200 || token.body.empty()) {
      return absl::PermissionDeniedError(
          absl::StrCat("PUT /latest/api/token: HTTP ", token.status, " (IMDSv1 is not used)"));
    }
    const std::string header = absl::StrCat("X-aws-ec2-metadata-token: ", token.body);
    const std::string base = absl::StrCat(endpoint_, "/latest/meta-data/iam/security-credentials/");
    HttpReply roles;
    EMBER_ASSIGN_OR_RETURN(roles, CallAws(HttpRequest("GET", base, {header}, 2000)));
    const std::string role(absl::StripAsciiWhitespace(
        absl::string_view(roles.body).substr(0, roles.body.find('\n'))));
    if (roles.status != 200 || role.empty()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "GET ", base, ": HTTP ", roles.status, "; does the instance have an IAM role?"));
    }
    HttpReply creds;
    EMBER_ASSIGN_OR_RETURN(creds, CallAws(HttpRequest("GET", base + role, {header}, 2000)));
    if (creds.status != 200) {
      return absl::PermissionDeniedError(
          absl::StrCat("GET ", base, role, ": HTTP ", creds.status));
    }
    return CredentialsFromJson(creds.body, absl::StrCat("role ", role));
  }

 private:
  std::string endpoint_;
};

// --- Shared credentials and config files ----------------------------------------------------

using IniSections = std::map<std::string, std::map<std::string, std::string>>;

// The INI dialect of ~/.aws/credentials and ~/.aws/config (indented sub-keys are skipped).
IniSections ParseIni(absl::string_view text) {
  IniSections out;
  std::string section;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) continue;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = std::string(absl::StripAsciiWhitespace(line.substr(1, line.size() - 2)));
      out[section];
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos || section.empty()) continue;
    out[section][std::string(absl::StripAsciiWhitespace(line.substr(0, eq)))] =
        std::string(absl::StripAsciiWhitespace(line.substr(eq + 1)));
  }
  return out;
}

std::string HomeFile(const char* env, absl::string_view under_home) {
  std::string path = Env(env);
  if (path.empty()) path = absl::StrCat(Env("HOME"), "/", under_home);
  return path;
}

struct Profile {
  std::string name;
  bool explicit_name = false;           // AWS_PROFILE set
  std::string credentials_file, config_file;
  std::map<std::string, std::string> keys;  // the credentials file's over the config file's
  bool found = false;
};

Profile LoadProfile() {
  Profile p;
  p.name = Env("AWS_PROFILE");
  p.explicit_name = !p.name.empty();
  if (p.name.empty()) p.name = "default";
  p.credentials_file = HomeFile("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
  p.config_file = HomeFile("AWS_CONFIG_FILE", ".aws/config");
  if (auto text = ReadFile(p.config_file, "config"); text.ok()) {
    IniSections ini = ParseIni(*text);
    auto it = ini.find(p.name == "default" ? "default" : absl::StrCat("profile ", p.name));
    if (it != ini.end()) p.keys = it->second, p.found = true;
  }
  if (auto text = ReadFile(p.credentials_file, "credentials"); text.ok()) {
    IniSections ini = ParseIni(*text);
    if (auto it = ini.find(p.name); it != ini.end()) {
      for (auto& [k, v] : it->second) p.keys[k] = v;
      p.found = true;
    }
  }
  return p;
}

std::string StsUrl(absl::string_view region) {
  std::string url = AwsEndpointUrl("STS");
  if (url.empty()) url = absl::StrCat("https://sts.", region, ".amazonaws.com");
  return std::string(absl::StripSuffix(url, "/")) + "/";
}

// The SDKs allow plain HTTP to the container endpoint only on the node or the link-local
// addresses EKS and ECS use, so a mistaken URL cannot send the token elsewhere.
bool AllowedContainerUrl(absl::string_view url) {
  if (absl::StartsWith(url, "https://")) return true;
  for (absl::string_view host : {"http://127.", "http://localhost:", "http://localhost/",
                                 "http://[::1]", "http://169.254.170.2:", "http://169.254.170.2/",
                                 "http://169.254.170.23:", "http://169.254.170.23/",
                                 "http://[fd00:ec2::23]"}) {
    if (absl::StartsWith(url, host)) return true;
  }
  return false;
}

absl::Status Failed(const AwsCredentialSource& source, const absl::Status& why) {
  return absl::Status(why.code(), absl::StrCat("AWS credentials from ", source.name(),
                                               " failed: ", why.message()));
}

absl::StatusOr<std::unique_ptr<AwsCredentialProvider>> Provide(
    std::unique_ptr<AwsCredentialSource> source) {
  absl::StatusOr<AwsCredentials> first = source->Fetch();
  if (!first.ok()) return Failed(*source, first.status());
  return std::make_unique<AwsCredentialProvider>(std::move(source), *std::move(first));
}

absl::StatusOr<std::unique_ptr<AwsCredentialProvider>> Lookup() {
  std::vector<std::string> tried;
  // 1. The environment.
  const std::string access = Env("AWS_ACCESS_KEY_ID"), secret = Env("AWS_SECRET_ACCESS_KEY");
  if (!access.empty() || !secret.empty()) {
    if (access.empty() || secret.empty()) {
      return absl::InvalidArgumentError(
          "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (one of them is empty)");
    }
    return Provide(std::make_unique<StaticSource>(
        "the environment (AWS_ACCESS_KEY_ID)",
        AwsCredentials{access, secret, Env("AWS_SESSION_TOKEN")}));
  }
  tried.push_back("the environment: AWS_ACCESS_KEY_ID is unset");
  // 2. Web identity.
  const std::string token_file = Env("AWS_WEB_IDENTITY_TOKEN_FILE"), role = Env("AWS_ROLE_ARN");
  if (!token_file.empty() || !role.empty()) {
    if (token_file.empty() || role.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "web identity needs both AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN; ",
          token_file.empty() ? "AWS_WEB_IDENTITY_TOKEN_FILE" : "AWS_ROLE_ARN", " is unset"));
    }
    std::string session = Env("AWS_ROLE_SESSION_NAME");
    if (session.empty()) session = absl::StrCat("ember-", getpid());
    return Provide(std::make_unique<WebIdentitySource>(role, token_file, session,
                                                       StsUrl(AwsRegion())));
  }
  tried.push_back("web identity: AWS_WEB_IDENTITY_TOKEN_FILE is unset");
  // 3. The shared files.
  const Profile profile = LoadProfile();
  const std::string files =
      absl::StrCat(profile.credentials_file, " or ", profile.config_file);
  if (profile.found) {
    const std::string where = absl::StrCat("profile '", profile.name, "' (", files, ")");
    const auto key = [&](const char* k) {
      auto it = profile.keys.find(k);
      return it == profile.keys.end() ? std::string() : it->second;
    };
    if (!key("aws_access_key_id").empty() && !key("aws_secret_access_key").empty()) {
      return Provide(std::make_unique<StaticSource>(
          where, AwsCredentials{key("aws_access_key_id"), key("aws_secret_access_key"),
                                key("aws_session_token")}));
    }
    for (const char* k : {"role_arn", "credential_process", "sso_session", "sso_start_url",
                          "web_identity_token_file"}) {
      if (!key(k).empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " uses ", k, ", which Ember does not follow; give the profile "
            "aws_access_key_id and aws_secret_access_key, or use web identity or container "
            "credentials through the environment"));
      }
    }
    if (profile.explicit_name) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " has no aws_access_key_id and aws_secret_access_key"));
    }
  } else if (profile.explicit_name) {
    return absl::InvalidArgumentError(
        absl::StrCat("AWS_PROFILE=", profile.name, ": no such profile in ", files));
  }
  tried.push_back(absl::StrCat("shared files: no keys for profile '", profile.name, "' in ", files));
  // 4. Container credentials.
  std::string container = Env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
  if (const std::string rel = Env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); !rel.empty()) {
    container = absl::StrCat("http://169.254.170.2", rel);  // the relative URI wins, as in the SDKs
  }
  if (!container.empty()) {
    if (!AllowedContainerUrl(container)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AWS_CONTAINER_CREDENTIALS_FULL_URI ", container, ": plain http only to the node "
          "(loopback) or 169.254.170.2/.23, as the AWS SDKs allow; use https"));
    }
    return Provide(std::make_unique<ContainerSource>(
        container, Env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        Env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")));
  }
  tried.push_back("container credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI is unset");
  // 5. Instance metadata.
  if (absl::AsciiStrToLower(Env("AWS_EC2_METADATA_DISABLED")) == "true") {
    tried.push_back("instance metadata: AWS_EC2_METADATA_DISABLED=true");
  } else {
    std::string endpoint = Env("AWS_EC2_METADATA_SERVICE_ENDPOINT");
    if (endpoint.empty()) endpoint = "http://169.254.169.254";
    auto source = std::make_unique<MetadataSource>(std::string(absl::StripSuffix(endpoint, "/")));
    absl::StatusOr<AwsCredentials> first = source->Fetch();
    if (first.ok()) {
      return std::make_unique<AwsCredentialProvider>(std::move(source), *std::move(first));
    }
    if (!absl::IsUnavailable(first.status())) return Failed(*source, first.status());
    tried.push_back(absl::StrCat("instance metadata: ", first.status().message()));
  }
  return absl::UnauthenticatedError(absl::StrCat(
      "no AWS credentials for s3:// sources; tried ", absl::StrJoin(tried, "; "),
      ". For a public bucket, pass --no_sign_request"));
}

std::atomic<bool> anonymous{false};

}  // namespace

AwsCredentialProvider::AwsCredentialProvider(std::unique_ptr<AwsCredentialSource> source,
                                             AwsCredentials first)
    : source_(std::move(source)), current_(std::move(first)) {}

AwsCredentialProvider::~AwsCredentialProvider() = default;

const std::string& AwsCredentialProvider::source() const { return source_->name(); }

AwsCredentials AwsCredentialProvider::Current() {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = absl::Now();
  if (current_.expiration - now > kRefreshAhead || now < next_attempt_) return current_;
  absl::StatusOr<AwsCredentials> fresh = source_->Fetch();
  if (fresh.ok()) {
    current_ = *std::move(fresh);
    LogInfo("loader", "s3 credentials refreshed",
            {{"source", source()}, {"expires", absl::FormatTime(current_.expiration)}});
  } else {
    next_attempt_ = now + kRetryFailedRefresh;
    LogWarning("loader", "s3 credentials could not be refreshed",
               {{"source", source()},
                {"error", std::string(fresh.status().message())},
                {"expires", absl::FormatTime(current_.expiration)}});
  }
  return current_;
}

void SetS3Anonymous(bool value) { anonymous = value; }

absl::StatusOr<std::shared_ptr<AwsCredentialProvider>> S3Credentials() {
  if (anonymous) return std::shared_ptr<AwsCredentialProvider>();
  // The lookup is kept while the variables it reads stay the same (in memory only).
  std::string environment;
  for (const char* name :
       {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
        "AWS_REGION", "AWS_DEFAULT_REGION", "HOME"}) {
    absl::StrAppend(&environment, Env(name), "\n");
  }
  static std::mutex mu;
  static std::shared_ptr<AwsCredentialProvider> found;
  static std::string found_for;
  std::lock_guard<std::mutex> lock(mu);
  if (found && found_for == environment) return found;
  absl::StatusOr<std::unique_ptr<AwsCredentialProvider>> looked_up = Lookup();
  if (!looked_up.ok()) return looked_up.status();
  found = *std::move(looked_up);
  found_for = std::move(environment);
  LogInfo("loader", "s3 credentials", {{"source", found->source()}});
  return found;
}

std::string AwsRegion() {
  for (const char* name : {"AWS_REGION", "AWS_DEFAULT_REGION"}) {
    if (std::string region = Env(name); !region.empty()) return region;
  }
  const Profile profile = LoadProfile();
  if (auto it = profile.keys.find("region"); it != profile.keys.end() && !it->second.empty()) {
    return it->second;
  }
  return "us-east-1";
}

std::string AwsEndpointUrl(absl::string_view service) {
  std::string url = Env(absl::StrCat("AWS_ENDPOINT_URL_", service).c_str());
  return url.empty() ? Env("AWS_ENDPOINT_URL") : url;
}

absl::StatusOr<std::string> AwsCaBundle() {
  std::string path = Env("AWS_CA_BUNDLE");
  if (path.empty()) return path;
  if (access(path.c_str(), R_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("AWS_CA_BUNDLE ", path, " cannot be read"));
  }
  return path;
}

}  // namespace ember::loader
