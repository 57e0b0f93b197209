DROP TABLE IF EXISTS service_credentials;
