"""Services the entry points (the JSON API, the dashboard, the commands) share: the rules of a
use case live here once, over the store's and the other adapters. `review`: overrides,
statuses, confirmations and the patient explanation, composed with its parts `moves` (proposed
moves) and `suggestions` (placement suggestions); `outcomes`, `explanation` and `references`
hold what they return and the one check of a reference."""
