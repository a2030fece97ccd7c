//! Wire types shared by every llmux crate: the error taxonomy, OpenAI-shaped request and response
//! types for library users, usage accounting, and the shallow JSON object used to forward bodies
//! without re-encoding them.

pub mod error;
pub mod openai;
pub mod raw;
pub mod usage;

pub use error::{ErrorBody, ErrorEnvelope, ErrorKind, GatewayError};
pub use raw::{RawObject, RawObjectError};
pub use usage::Usage;
