"""The pharmacokinetics behind the next-trough forecast, in one room: the population models
(`models/`, data with citations), their kinetics (`kinetics`), the estimation of a patient's own
parameters (`estimation`), the forecast and its refusals (`forecast`), and what a level's alert
asks of it (`next_trough`). Pure, as the rest of `interpretation/`; the dose history it reads is
the patient's treatment record (`interpretation.treatment`), which trough timing reads too."""
