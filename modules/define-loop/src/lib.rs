//! A module whose `define` never returns: the deploy must fail with a deadline error.

use sluice_sdk::{Definition, Module};

struct DefineLoop;

impl Module for DefineLoop {
    fn define(_m: &mut Definition) {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

sluice_sdk::export_module!(DefineLoop);
