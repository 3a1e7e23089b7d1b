-- Everything pgflow stores about the definitions of flows, as one JSON
-- value (creation times and step numbers left out), to compare two databases.
SELECT jsonb_build_object(
  'flows', (SELECT coalesce(jsonb_agg(to_jsonb(f) - 'created_at' ORDER BY f.flow_slug), '[]') FROM pgflow.flows f),
  'steps', (SELECT coalesce(jsonb_agg(to_jsonb(s) - 'created_at' - 'step_id' ORDER BY s.flow_slug, s.step_index), '[]') FROM pgflow.steps s),
  'deps',  (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.flow_slug, d.step_slug, d.dep_index), '[]') FROM pgflow.deps d)
)::text
