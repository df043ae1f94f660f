-- 0002: vacuum the queue table early. A claim walks the head of geo_jobs_claim_idx, and what
-- slows it down is the dead entries a busy queue leaves there (bench/queue_ops.py): under the
-- server's default (20 % of the table) a million-row geo_jobs piles up 200,000 of them before
-- autovacuum starts, doubling claim latency; 1 % keeps it within a few percent.
ALTER TABLE geo_jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                          autovacuum_analyze_scale_factor = 0.02);
