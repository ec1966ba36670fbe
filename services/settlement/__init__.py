"""Settlement: splits order revenue among members and publishes payout roots for the on-chain distributor."""
