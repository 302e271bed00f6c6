//! Customer.io App API client (resync). Placeholder.
