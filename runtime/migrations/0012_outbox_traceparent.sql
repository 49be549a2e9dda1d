-- The W3C traceparent of the span that wrote an outbox row (NULL when tracing is off): the
-- relay sends it as a Kafka header so the consumer's span continues the producer's trace.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent TEXT;
