// Peer serving: the model's weight files, by byte range, to other workers starting with the
// same model (loader/peer.h has the protocol and the fetching side). Read-only, and only the
// weight files of the model this worker loaded, rebuilt from what it holds in memory: no
// request reaches the file system. Every request must carry the shared token
// ("Authorization: Bearer TOKEN"); without it, 403.
//
//   GET /v1/peer/manifest        the source, each file's version and checksums (503 until
//                                the model is loaded)
//   GET /v1/peer/objects/NAME    a weight file; a Range header gives 206 with Content-Range,
//                                and ETag and Last-Modified as the store listed them
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "loader/peer.h"

namespace ember::worker {

class PeerServer {
 public:
  // Listens on `port` (0: a free one) on all interfaces, one thread per connection.
  static absl::StatusOr<std::unique_ptr<PeerServer>> Start(int port, std::string token);
  ~PeerServer();

  // What to serve from now on (null: nothing yet).
  void SetModel(std::shared_ptr<const loader::ServedModel> model);
  int port() const { return port_; }

  struct State;

 private:
  PeerServer() = default;
  std::unique_ptr<State> state_;
  int port_ = 0;
};

}  // namespace ember::worker
