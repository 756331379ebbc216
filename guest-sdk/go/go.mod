module aggregatehost.dev/sdk

go 1.24
