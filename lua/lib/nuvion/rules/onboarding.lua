-- Onboarding tiers: what a customer may hold and move, by how far their KYC/KYB has gone.
-- Read by core (lua/services/core/onboarding.lua: the tier a customer gets) and by the wallets
-- (limits). A rules file for a risk analyst: edit the numbers and reload core to change them.
--
-- Amounts are integers in the asset's minor units (USD and EUR cents). An asset not listed in a
-- tier is not allowed at that tier. "daily" is a rolling 24 h window.
--
--   tier  who                                   max balance   daily in    daily out
--     0   not verified (pending, in review,       0           0           0
--         action required, rejected)
--     1   verified individual (KYC)              5,000.00     2,500.00    2,500.00
--     2   verified business (KYB)              250,000.00   100,000.00  100,000.00
local function limits(max_balance, daily_in, daily_out)
  return { max_balance = max_balance, daily_in = daily_in, daily_out = daily_out }
end

local RULES = {
  tiers = {
    [0] = { name = "unverified", kyc_level = "none",
            assets = { USD = limits(0, 0, 0), EUR = limits(0, 0, 0) } },
    [1] = { name = "individual_verified", kyc_level = "kyc",
            assets = { USD = limits(500000, 250000, 250000), EUR = limits(500000, 250000, 250000) } },
    [2] = { name = "business_verified", kyc_level = "kyb",
            assets = { USD = limits(25000000, 10000000, 10000000), EUR = limits(25000000, 10000000, 10000000) } },
  },

  -- The tier a customer is given when it reaches a state (a state not listed keeps tier 0).
  tier_on_verified = { individual = 1, business = 2 },
}

-- The limits of a tier for an asset: { max_balance, daily_in, daily_out }, or nil when the
-- tier or the asset is unknown (not allowed).
function RULES.limits(tier, asset)
  local t = RULES.tiers[tier]
  return t and t.assets[asset] or nil
end

-- The tier of a customer of this kind in this state.
function RULES.tier_for(kind, state)
  if state == "verified" then return RULES.tier_on_verified[kind] or 0 end
  return 0
end

return RULES
