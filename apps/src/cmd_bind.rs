//! The command-line side of `rbufnic bind` and `rbufnic unbind`.

use driver::pci::SysPaths;
use rbufnic::bind::{self, Moved};

fn say(verb: &str, m: &Moved) {
    let name = |d: &Option<String>| d.clone().unwrap_or_else(|| "no driver".into());
    if m.changed() {
        println!("{}: {} -> {}", m.addr, name(&m.before), name(&m.after));
    } else {
        println!("{}: already {verb} ({})", m.addr, name(&m.after));
    }
}

/// `rbufnic bind PCI`.
pub fn bind(pci: &str) -> anyhow::Result<()> {
    let paths = SysPaths::default();
    let moved = bind::bind_vfio(&paths, pci)?;
    say("on vfio-pci", &moved);
    if let Some(group) = paths.iommu_group(moved.addr) {
        let blockers = paths.group_blockers(group);
        if !blockers.is_empty() {
            println!(
                "note: IOMMU group {group} is not viable until these are bound to vfio-pci too: {}",
                blockers.join(", ")
            );
        }
    } else {
        println!(
            "note: {} has no IOMMU group; is the IOMMU on (intel_iommu=on)?",
            moved.addr
        );
    }
    Ok(())
}

/// `rbufnic unbind PCI`.
pub fn unbind(pci: &str) -> anyhow::Result<()> {
    let moved = bind::unbind_vfio(&SysPaths::default(), pci)?;
    say("off vfio-pci", &moved);
    Ok(())
}
