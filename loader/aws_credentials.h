// AWS credentials for s3:// sources, found as the AWS SDKs find them, so a pod gets them the
// way its cluster provides them. The sources, in botocore's order (the first one configured
// answers; one configured but failing is an error, not a fall-through):
//   1. environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
//   2. web identity (EKS IRSA): AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN
//      (AWS_ROLE_SESSION_NAME) -> STS AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS,
//      AWS_ENDPOINT_URL or sts.REGION.amazonaws.com; the token file is read at each refresh,
//      as the kubelet rotates it;
//   3. shared files: the profile AWS_PROFILE (else "default") in AWS_SHARED_CREDENTIALS_FILE
//      (~/.aws/credentials) or AWS_CONFIG_FILE (~/.aws/config), static keys only;
//   4. container credentials (EKS Pod Identity, ECS): AWS_CONTAINER_CREDENTIALS_FULL_URI or
//      _RELATIVE_URI, with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or _TOKEN;
//   5. the instance metadata service, IMDSv2 (token, role, credentials) at
//      AWS_EC2_METADATA_SERVICE_ENDPOINT or 169.254.169.254, unless AWS_EC2_METADATA_DISABLED.
// Credentials that expire are refreshed five minutes before they do. AWS_CA_BUNDLE names the
// CA certificates for TLS to S3 and to these services (the system store otherwise).
//
// Hand-written, not the AWS SDK for C++: Debian does not package it, and libcurl already signs
// (CURLOPT_AWS_SIGV4); this is only the lookup of the keys to sign with.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// For the CLIs' usage text and their --no_sign_request flag.
#define EMBER_S3_CREDENTIALS_USAGE                                                         \
  "S3 credentials are found as the AWS SDKs find them: AWS_ACCESS_KEY_ID and\n"            \
  "AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN); web identity (AWS_WEB_IDENTITY_TOKEN_FILE and\n" \
  "AWS_ROLE_ARN: EKS IRSA); AWS_PROFILE in ~/.aws/credentials or ~/.aws/config; container\n" \
  "credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI: EKS Pod Identity); the instance metadata\n" \
  "service. Also AWS_REGION, AWS_ENDPOINT_URL (path-style: MinIO, Ceph, R2) and\n"           \
  "AWS_CA_BUNDLE (a private CA).\n"
#define EMBER_NO_SIGN_REQUEST_HELP \
  "Read s3:// sources anonymously (public buckets): no credentials are looked up or sent"

namespace ember::loader {

struct AwsCredentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;           // empty for long-term keys
  absl::Time expiration = absl::InfiniteFuture();
};

class AwsCredentialSource;

// A source found by the lookup, with the credentials it gave; shared by every store of the
// process. Thread-safe.
class AwsCredentialProvider {
 public:
  explicit AwsCredentialProvider(std::unique_ptr<AwsCredentialSource> source,
                                 AwsCredentials first);
  ~AwsCredentialProvider();

  // The credentials to sign with now: refreshed (blocking, once for all callers) when they
  // expire within five minutes. A failed refresh keeps the old ones until they expire, logs a
  // warning, and is not retried for ten seconds.
  AwsCredentials Current();
  // Which source, e.g. "web identity (AWS_ROLE_ARN=arn:aws:iam::1:role/ember)"; never a secret.
  const std::string& source() const;

 private:
  std::unique_ptr<AwsCredentialSource> source_;
  std::mutex mu_;
  AwsCredentials current_;
  absl::Time next_attempt_ = absl::InfinitePast();
};

// Reads s3:// sources anonymously (public buckets): no lookup, nothing signed. The CLIs'
// --no_sign_request sets it.
void SetS3Anonymous(bool anonymous);

// The process's provider: looked up on first use and again when the variables above change;
// nullptr when anonymous. An error
// names every source tried and why it did not answer (or why the one configured failed), and
// how to read a public bucket; it is not cached, so a later call looks again.
absl::StatusOr<std::shared_ptr<AwsCredentialProvider>> S3Credentials();

// AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region (see above), else us-east-1.
std::string AwsRegion();

// A custom endpoint for an AWS service, as the SDKs take it: AWS_ENDPOINT_URL_<SERVICE>
// (e.g. _S3, _STS), else AWS_ENDPOINT_URL; empty for AWS itself.
std::string AwsEndpointUrl(absl::string_view service);

// AWS_CA_BUNDLE, checked to be a readable file; empty when unset.
absl::StatusOr<std::string> AwsCaBundle();

}  // namespace ember::loader
