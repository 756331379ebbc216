module bank-account-go

go 1.24

require aggregatehost.dev/sdk v0.0.0

replace aggregatehost.dev/sdk => ../../guest-sdk/go
