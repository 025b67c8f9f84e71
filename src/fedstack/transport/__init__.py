"""The wire: protobuf messages, the gRPC service, and the server and client that speak it."""

PROTOCOL = 4  # wire protocol version; a server refuses clients that speak another (4: personalised algorithms)
CHUNK_BYTES = 1 << 20  # large payloads travel in chunks of this size
MAX_MESSAGE_BYTES = 8 << 20  # gRPC message limit on both ends: comfortably above one chunk
