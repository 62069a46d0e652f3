//! IPFS as a blob source, over kubo's HTTP RPC API.
