-- The stored shape of the given flows: one row per step (a flow without
-- steps gives one row with NULL step columns). Durations in microseconds.
SELECT f.flow_slug,
       f.opt_max_attempts,
       (extract(epoch FROM f.opt_base_delay) * 1000000)::bigint,
       (extract(epoch FROM f.opt_timeout) * 1000000)::bigint,
       s.step_slug,
       s.step_type,
       s.opt_max_attempts,
       (extract(epoch FROM s.opt_base_delay) * 1000000)::bigint,
       (extract(epoch FROM s.opt_timeout) * 1000000)::bigint,
       (extract(epoch FROM s.opt_start_delay) * 1000000)::bigint,
       coalesce((SELECT array_agg(d.dep_slug ORDER BY d.dep_index)
                 FROM pgflow.deps d
                 WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug), '{}')
FROM pgflow.flows f
LEFT JOIN pgflow.steps s ON s.flow_slug = f.flow_slug
WHERE f.flow_slug = ANY ($1)
ORDER BY f.flow_slug, s.step_index
