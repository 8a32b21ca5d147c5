//! Userspace TCP/IP (smoltcp) that terminates or originates TCP and UDP flows over raw IP packets.
