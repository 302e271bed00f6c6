-- "Why did this audience drop 40%?": membership changes per audience over
-- time, by Customer.io's event time.
CREATE INDEX events_audience_time ON events(audience_id, occurred_at);
