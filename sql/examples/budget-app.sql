-- Tracking for the family-budget app's real schema (see README, "Replacing
-- the backend's real-time layer"). Run after install.sql:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/install.sql -f sql/examples/budget-app.sql
--
-- It is what GATEWAY_TRACK in deploy/budget-app.env makes `gateway migrate` do.

-- Facts and plans share t_f_budget_fact; record_type names the event:
-- fact_created / plan_created, fact_updated / plan_updated, fact_deleted /
-- plan_deleted. The data is the app's whitelist; tab_origin_id comes from
-- SET LOCAL budget.tab_origin_id = '...' in the backend's transaction (null
-- when it does not set it). A DELETE of several rows sends
-- facts_batch_deleted {"fact_ids": [...], "keys": [...], "deleted_count": n}
-- per 1,000 rows instead of one event per row.
SELECT rtgw.track(
    't_f_budget_fact',
    '{record_type}',
    ARRAY['id', 'article_id', 'financial_center_id', 'cost_center_id', 'amount',
          'fact_date', 'description', 'record_type', 'transfer_id'],
    '{"tab_origin_id": "budget.tab_origin_id"}',
    'facts_batch_deleted',
    'fact_ids');

-- Articles: article_created, article_updated, article_deleted, every column.
SELECT rtgw.track('t_d_article', 'article');
