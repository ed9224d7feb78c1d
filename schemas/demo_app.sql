-- The demo application's database: a multi-tenant SaaS (WhatsApp customer-service desk, CRM,
-- HR/attendance, voice agent). `lethe demo` creates it in SQLite; schemas/app.toml maps it.
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS'.
CREATE TABLE tenants (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, plan TEXT NOT NULL, status TEXT NOT NULL,
  created_at TIMESTAMP NOT NULL, cancelled_at TIMESTAMP, time_zone TEXT);
CREATE TABLE accounts (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, email TEXT NOT NULL, display_name TEXT NOT NULL,
  role TEXT NOT NULL, created_at TIMESTAMP NOT NULL, last_login_at TIMESTAMP, deleted_at TIMESTAMP,
  flagged_inactive_at TIMESTAMP);
CREATE TABLE customers (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, phone TEXT NOT NULL, name TEXT NOT NULL,
  email TEXT, created_at TIMESTAMP NOT NULL);
CREATE TABLE messages (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, customer_phone TEXT NOT NULL, customer_name TEXT,
  channel TEXT NOT NULL, direction TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
  created_at TIMESTAMP NOT NULL);
CREATE TABLE calls (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, customer_phone TEXT NOT NULL,
  started_at TIMESTAMP NOT NULL, duration_s INTEGER NOT NULL, transcript TEXT, recording_key TEXT);
CREATE TABLE attendance_checkins (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, account_id INTEGER NOT NULL, employee_no TEXT NOT NULL,
  checked_in_at TIMESTAMP NOT NULL, latitude REAL, longitude REAL, selfie_key TEXT);
CREATE TABLE audit_log (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, account_id INTEGER, action TEXT NOT NULL,
  target TEXT, occurred_at TIMESTAMP NOT NULL);
CREATE TABLE app_log (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL,
  account_id INTEGER, logged_at TIMESTAMP NOT NULL);
CREATE TABLE security_log (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, event TEXT NOT NULL, account_id INTEGER,
  ip_hash TEXT, occurred_at TIMESTAMP NOT NULL);
CREATE TABLE magic_link_tokens (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, account_id INTEGER NOT NULL, token_hash TEXT NOT NULL,
  issued_at TIMESTAMP NOT NULL, used_at TIMESTAMP);
CREATE TABLE refresh_tokens (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, account_id INTEGER NOT NULL, token_hash TEXT NOT NULL,
  issued_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL);
CREATE TABLE revoked_tokens (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, token_hash TEXT NOT NULL, revoked_at TIMESTAMP NOT NULL);
CREATE TABLE ip_hashes (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, account_id INTEGER, ip_hash TEXT NOT NULL,
  seen_at TIMESTAMP NOT NULL);
CREATE TABLE support_tickets (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, requester_email TEXT NOT NULL, subject TEXT NOT NULL,
  body TEXT NOT NULL, created_at TIMESTAMP NOT NULL, resolved_at TIMESTAMP);
CREATE TABLE billing_records (
  id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, invoice_no TEXT NOT NULL, billing_name TEXT NOT NULL,
  billing_email TEXT NOT NULL, amount_idr INTEGER NOT NULL, paid BOOLEAN NOT NULL,
  invoiced_at TIMESTAMP NOT NULL, due_date DATE NOT NULL);
CREATE INDEX accounts_tenant ON accounts (tenant_id);
CREATE INDEX customers_tenant ON customers (tenant_id);
CREATE INDEX messages_tenant ON messages (tenant_id);
CREATE INDEX calls_tenant ON calls (tenant_id);
CREATE INDEX attendance_checkins_tenant ON attendance_checkins (tenant_id);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id);
CREATE INDEX app_log_tenant ON app_log (tenant_id);
CREATE INDEX security_log_tenant ON security_log (tenant_id);
CREATE INDEX magic_link_tokens_tenant ON magic_link_tokens (tenant_id);
CREATE INDEX refresh_tokens_tenant ON refresh_tokens (tenant_id);
CREATE INDEX revoked_tokens_tenant ON revoked_tokens (tenant_id);
CREATE INDEX ip_hashes_tenant ON ip_hashes (tenant_id);
CREATE INDEX support_tickets_tenant ON support_tickets (tenant_id);
CREATE INDEX billing_records_tenant ON billing_records (tenant_id);
