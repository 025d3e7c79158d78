//! The web facade: actix-web routes that turn build-server calls into messages to
//! the actors. Handlers only read bodies (bounded in size and time), check tokens
//! and encode answers; nothing here blocks.

mod body;
mod error;
mod https;
mod ops;
mod routes;
mod scheduler_api;
mod state;
mod status_page;

pub use body::BodyBudget;
pub use error::ApiError;
pub use https::{listen_h1, ConnectionLimits};
pub use ops::{configure as configure_ops, Ops};
pub use routes::configure;
pub use scheduler_api::configure_scheduler;
pub use state::{AppState, HttpLimits};
