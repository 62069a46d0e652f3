//! Registry authentication: docker config credentials ([`config`]), `WWW-Authenticate`
//! challenges ([`challenge`]) and the shared bearer-token cache ([`token`]).

pub mod challenge;
pub mod config;
pub mod token;

pub use challenge::{parse_challenges, Challenge};
pub use config::{ConfigError, Credential, CredentialStore, DockerConfig};
pub use token::{Token, TokenCache, TokenKey};
