//! A hook for the C test program, in debug builds only: it makes a library
//! call panic on purpose so the test can check the panic boundary from C.
//! It is not in the header (a test declares it itself) and not in release
//! builds.

use crate::error::{boundary, sb_error, Failure};
use crate::handles::sb_client;
use crate::runtime;

/// cbindgen:ignore
/// Panics inside the library, behind the boundary, where `place` says:
/// 0 on the calling thread; 1 in a task on a runtime worker thread (the
/// panic reaches the call through the task's join); 2 while holding the
/// lock of `client`'s `sb_serve` state (poisoning it; later calls must
/// still work). Any other `place` answers `SB_ERR_INVALID_ARGUMENT`.
/// Returns `SB_ERR_PANIC` with the panic's message as the last error.
///
/// # Safety
/// `client` is any value; it is never dereferenced.
#[no_mangle]
pub unsafe extern "C" fn sb__test_panic(client: *mut sb_client, place: i32) -> sb_error {
    boundary(|| match place {
        0 => panic!("test panic on the calling thread"),
        1 => {
            let task = runtime::handle().spawn(async {
                panic!("test panic in a runtime task");
            });
            match runtime::block_on(task) {
                Ok(()) => Ok(()),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        2 => {
            let entry = crate::ops::entry(client)?;
            let _held = entry.serving.lock();
            panic!("test panic holding the client's serve lock");
        }
        _ => Err(Failure::new(
            sb_error::SB_ERR_INVALID_ARGUMENT,
            format!("no test panic place {place}"),
        )),
    })
}
