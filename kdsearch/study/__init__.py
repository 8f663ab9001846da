"""Studies in SQL storage: opening storage, locks, coordination between workers, the runner,
local worker processes and graceful shutdown."""
