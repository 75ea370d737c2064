// Each test binary includes this module but uses only part of it.
#![allow(dead_code)]

pub mod cli;
pub mod lab;
pub mod net;
pub mod node;
pub mod process;
