//! End-to-end tests: the `governance` binary run as a process against real Postgres, each test
//! with its own database.

mod archive;
mod browser;
mod checkpoint;
mod demo;
mod docs;
mod evidence;
mod export_import;
mod faults;
mod first_hour;
mod gateway;
mod keys;
mod local;
mod migrate;
mod notify;
mod outputs;
mod policy;
mod processes;
mod prove;
mod report;
mod rotate;
mod siem;
mod spool;
mod sqlite_files;
mod support;
mod tail;
mod tamper;
mod users;
mod verify;
mod verify_range;
mod witness;
