-- Run isolation (issue 12): each agent's own resource limits over the configured
-- defaults (JSON: memory_mb, processes, cpu_s, output_mb, disk_mb; a missing key
-- takes the default), and whether its runs may use the network.
ALTER TABLE agents ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN network INTEGER NOT NULL DEFAULT 1;
