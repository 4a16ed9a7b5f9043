//! The embedded kernels: typed names (generated from `kernels/*.cu` by
//! build.rs, so a misspelled kernel does not compile), the fatbins, and the
//! `ptxas -v` resource report parsed into a table (`switchyard kernels`).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// One `extern "C"` kernel: its family (= `kernels/<family>.cu`) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// Source file stem.
    pub family: &'static str,
    /// Symbol name.
    pub name: &'static str,
}

/// The embedded fatbin of a family.
pub fn fatbin(family: &str) -> Option<&'static [u8]> {
    FATBINS.iter().find(|(f, _)| *f == family).map(|(_, b)| *b)
}

/// Resource use of one kernel on one architecture, from ptxas.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Resources {
    /// Kernel symbol.
    pub kernel: String,
    /// `sm_80`, `sm_90a`.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of register spill stores.
    pub spill_stores: u32,
    /// Bytes of register spill loads.
    pub spill_loads: u32,
    /// Stack frame bytes.
    pub stack: u32,
    /// Static shared memory bytes.
    pub smem: u32,
}

/// Parse a `ptxas -v` log (as kept in [`PTXAS_REPORT`]) into one row per
/// (kernel, arch). Unknown lines are ignored.
pub fn parse_ptxas(log: &str) -> Vec<Resources> {
    let mut rows: Vec<Resources> = Vec::new();
    let num_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find_map(|part| {
                let part = part.trim();
                let rest = part.strip_suffix(unit)?.trim();
                rest.rsplit(' ').next()?.parse().ok()
            })
            .unwrap_or(0)
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut it = rest.split('\'');
            let kernel = it.next().unwrap_or_default().to_string();
            let arch = it.nth(1).unwrap_or_default().to_string();
            rows.push(Resources { kernel, arch, ..Default::default() });
        } else if let Some(r) = rows.last_mut() {
            if line.contains("spill stores") {
                r.stack = num_before(line, "bytes stack frame");
                r.spill_stores = num_before(line, "bytes spill stores");
                r.spill_loads = num_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                let used = line.split("Used ").nth(1).unwrap_or_default();
                r.registers = used.split(' ').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                r.smem = num_before(line, "bytes smem");
            }
        }
    }
    rows
}

/// Theoretical occupancy (resident warps / 64 per SM) on sm_80/sm_90 for a
/// kernel with `registers` per thread, `block` threads and `smem` bytes of
/// shared memory per block (`smem_per_sm` bytes usable per SM).
pub fn occupancy(registers: u32, block: u32, smem: u32, smem_per_sm: u32) -> f64 {
    let warps_per_block = block.div_ceil(32).max(1);
    // Registers are allocated per warp in units of 256.
    let regs_per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = 65_536 / (regs_per_warp * warps_per_block);
    let by_smem = if smem == 0 { u32::MAX } else { smem_per_sm / (smem + 1024) };
    let by_threads = 2048 / (warps_per_block * 32);
    let blocks = by_regs.min(by_smem).min(by_threads).min(32);
    f64::from(blocks * warps_per_block) / 64.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_log() {
        let log = "ptxas info    : Compiling entry function 'attention_fwd_hd64' for 'sm_90a'\n\
                   ptxas info    : Function properties for attention_fwd_hd64\n\
                   \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 168 registers, used 1 barriers, 36864 bytes smem, 400 bytes cmem[0]\n";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0],
            Resources {
                kernel: "attention_fwd_hd64".into(),
                arch: "sm_90a".into(),
                registers: 168,
                spill_stores: 4,
                spill_loads: 12,
                stack: 8,
                smem: 36864,
            }
        );
    }

    #[test]
    fn occupancy_limits() {
        // 32 regs, 256 threads: thread-limited at 8 blocks = 64 warps.
        assert_eq!(occupancy(32, 256, 0, 228 * 1024), 1.0);
        // 255 regs x 128 threads: 65536 / (8192 * 4) = 2 blocks = 8 warps.
        assert_eq!(occupancy(255, 128, 0, 228 * 1024), 0.125);
    }
}
