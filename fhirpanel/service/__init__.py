"""Services the entry points (the JSON API, the dashboard, the commands) share: the rules of a
use case live here once, over the store's and the other adapters. `review`: overrides,
confirmations and the patient explanation."""
