//! LearnTrac's domain: turning textbooks into sections and chunks, the
//! offline engine (embedding, question generation, grading), hybrid search
//! and learning-path planning. Nothing here touches storage or HTTP.

pub mod book;
pub mod embed;
pub mod grade;
pub mod ingest;
pub mod path;
pub mod question;
pub mod search;
pub mod text;
