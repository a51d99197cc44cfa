"""Scale-out: one API role in front of GPU worker roles, on Redis (job store, queue) and RQ (workers)."""
