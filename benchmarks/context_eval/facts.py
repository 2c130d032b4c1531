"""The planted facts of the evaluation set, and the questions that ask for them in other words.

Each theme is one kind of data-science notebook conversation. A fact is said once, early,
by the user or by the assistant; its question comes at the end of the conversation and
is phrased the way people ask later: different words, often no shared keyword at all.
``key`` is the part of the fact an answer needs: it must reach the model for the
question to count as answered.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    speaker: str  # "user" or "assistant": who says the fact
    text: str
    question: str
    key: str
    lead_in: str = ""  # for the assistant's facts: the user's question it answers


@dataclass(frozen=True)
class Theme:
    name: str
    task: str  # the first message: what the notebook is about
    variables: tuple[str, ...]
    columns: tuple[str, ...]
    models: tuple[str, ...]
    metrics: tuple[str, ...]
    domain: tuple[str, ...]  # sentences in the theme's vocabulary, for filler that looks relevant
    facts: tuple[Fact, ...]


def u(text: str, question: str, key: str) -> Fact:
    return Fact("user", text, question, key)


def a(text: str, question: str, key: str) -> Fact:
    return Fact("assistant", text, question, key, LEAD_INS[key])


# What the user asked when the assistant said each fact (in yet other words than the later question).
LEAD_INS = {
    "0.37": "At what probability should we put someone on the call list?",
    "0.912": "How did the models compare on the last quarter?",
    "4.5": "The positive class is tiny. What should I do about that?",
    "contract_type": "Something looks too good in the feature importances. Any idea why?",
    "support calls in the last 90 days": "Can you tell me what drives the predictions?",
    "13-week": "What horizon and granularity should the forecast have?",
    "WAPE": "Which metric should we show the buyers?",
    "8.4%": "How did the model with holidays do?",
    "square footage": "What do we do about stores without much data?",
    "0.05": "What came out of the tuning run?",
    "0.003": "What should the contamination parameter be?",
    "median filter": "The signals are really noisy. How do I clean them?",
    "50 Hz": "How much data is one hour of readings?",
    "40 minutes": "Was anything visible in the data before the pump broke in March?",
    "99.5th percentile": "How do I turn the autoencoder's output into alarms?",
    "HbA1c from baseline to week 26": "Remind me, what are we primarily testing?",
    "last observation carried forward": "What about the missing final visits?",
    "0.71": "What did the rescue medication analysis show?",
    "MMRM": "How should I model HbA1c over time?",
    "212 patients": "Can you check the sample size calculation?",
    "1.5 percentage points": "What was the test powered for?",
    "0.0004": "The groups look uneven in size. Is that a problem?",
    "CUPED": "The confidence intervals are very wide. Can we tighten them?",
    "2.1%": "So, what's the result on conversion?",
    "first 3 days": "Does the effect look stable over time?",
    "256 tokens": "How long should the inputs be for the model?",
    "0.61": "How good is the classifier on validation?",
    "3e-5": "Which hyperparameters worked for fine-tuning?",
    "Sarcasm": "What are the typical errors of the model?",
    "MinHash": "There seem to be many duplicate reviews. What did we do about them?",
}


THEMES: tuple[Theme, ...] = (
    Theme(
        name="churn",
        task="I'm building a churn model for our telecom customers in this notebook. The data is in `cust_df`; "
        "the goal is a weekly list of accounts the retention team should call.",
        variables=("cust_df", "churn_model", "X_train", "feature_cols", "scores"),
        columns=("monthly_charges", "tenure_m", "support_calls", "plan_name", "region", "last_payment", "data_gb"),
        models=("gradient boosting model", "logistic regression", "random forest", "XGBoost classifier"),
        metrics=("AUC", "precision at top 5%", "recall", "log loss", "lift"),
        domain=(
            "Customers with many support calls usually have higher bills as well.",
            "The retention team can only call a few hundred accounts each week.",
            "Prepaid customers behave very differently from contract customers.",
            "The probability scores are calibrated with isotonic regression afterwards.",
            "A customer counts as churned when the line is cancelled within 30 days of the snapshot.",
            "Regional differences are small once we control for the plan.",
            "Late payments are a weak but consistent signal of leaving.",
            "We should keep the model simple enough to explain to the call centre.",
            "The flag for likely leavers is refreshed every week from the latest snapshot.",
            "Some accounts are business lines with several users behind them.",
        ),
        facts=(
            u(
                "Quick note before we go further: in `cust_df` the column `tenure_m` is in months, but `tenure_d` from "
                "the old export counts days, so never mix the two.",
                "Which of the two tenure fields is the one measured in days?",
                "tenure_d",
            ),
            a(
                "We'll mark an account as at risk when the predicted probability is above 0.37; finance asked for that "
                "cutoff because every false alarm costs a retention call of about twelve dollars.",
                "What cut-off did we agree on for deciding that someone is probably going to cancel?",
                "0.37",
            ),
            u(
                "Marketing told me subscribers on the 'Family Max' bundle are out of scope for the campaign, so remove "
                "them before scoring.",
                "Which subscription tier must be left out before we produce the list?",
                "Family Max",
            ),
            a(
                "The boosted trees reach an area under the ROC curve of 0.912 on the Q4 holdout, against 0.861 for the "
                "logistic regression.",
                "How well did our best classifier do on the held-out quarter?",
                "0.912",
            ),
            u(
                "The raw extracts sit in the bucket s3://telco-raw-eu/churn/2023/ and they are refreshed every Monday "
                "at 6am.",
                "Where is the source data kept, and how often does it get updated?",
                "telco-raw-eu",
            ),
            a(
                "To compensate for the imbalance (only about 18% of accounts leave) use class_weight={0: 1, 1: 4.5} in "
                "the classifier.",
                "How much extra importance did we give the rare positive examples during training?",
                "4.5",
            ),
            u(
                "My manager Priya wants the final slides on the 14th of next month, with the top drivers on one page.",
                "When is the presentation due, and who asked for it?",
                "Priya",
            ),
            a(
                "The `contract_type` column leaks the answer: month-to-month contracts are recoded to 'cancelled' after "
                "the person leaves, so it has to go.",
                "Which input did we throw away because it gives the label away?",
                "contract_type",
            ),
            u(
                "We pass random_state=2718 everywhere so that every run gives the same numbers.",
                "What seed do we use so results are reproducible?",
                "2718",
            ),
            a(
                "The SHAP values say the number of support calls in the last 90 days is by far the strongest driver, "
                "followed by the monthly charges.",
                "What turned out to be the most important reason people quit, according to the explanations?",
                "support calls in the last 90 days",
            ),
        ),
    ),
    Theme(
        name="forecast",
        task="This notebook forecasts weekly demand for our retail stores. Sales history is in `sales_df` and the "
        "store attributes in `store_meta`; the buyers use the forecast to plan orders.",
        variables=("sales_df", "store_meta", "fcst", "holidays", "cv_results"),
        columns=("units", "store_id", "sku", "week", "price", "promo_flag", "region"),
        models=("Prophet model", "seasonal naive baseline", "LightGBM regressor", "ETS model"),
        metrics=("WAPE", "bias", "RMSE", "coverage of the 80% interval", "MASE"),
        domain=(
            "Demand jumps in the weeks before the school holidays.",
            "Promotions cannibalise the sales of similar products in the same store.",
            "Some SKUs are only sold in the larger stores.",
            "The buyers prefer a forecast that is slightly too high over one that runs out of stock.",
            "Price changes are announced two weeks in advance.",
            "Weather explains part of the weekly variation for garden products.",
            "New products have no history, so they borrow it from similar items.",
            "The regional distribution centres receive the orders on Thursdays.",
            "Stores in tourist areas have a strong summer peak.",
            "Out-of-stock weeks look like low demand in the data even though they are not.",
        ),
        facts=(
            u(
                "Heads up: store 117 was closed for renovation from June to August 2022, so its zeros in that period are "
                "not real demand.",
                "Which shop had fake zero sales because it was being refurbished?",
                "117",
            ),
            a(
                "I'd predict at weekly granularity with a 13-week horizon, since purchasing plans one quarter ahead.",
                "How far ahead are we predicting, and at what time resolution?",
                "13-week",
            ),
            u(
                "Careful, `sales_df.units` is net of returns; the gross number is in `units_gross`.",
                "Does the quantity we model include items that customers brought back?",
                "net of returns",
            ),
            a(
                "MAPE would mislead us because many SKUs sell nothing in some weeks, so I'd report WAPE instead.",
                "Which accuracy measure did you recommend over the percentage error, and why?",
                "WAPE",
            ),
            u(
                "Our fiscal year starts on February 1st, so Q1 is February to April.",
                "When does the company's financial year begin?",
                "February 1st",
            ),
            a(
                "With the holiday regressors the Prophet model gets 8.4% WAPE, against 11.9% for the seasonal naive "
                "baseline.",
                "How much better than the simple benchmark was the version with the special days?",
                "8.4%",
            ),
            u(
                "The Black Friday promos live in `promo_calendar.csv`, which Tomasz maintains.",
                "Who looks after the file with the discount dates?",
                "Tomasz",
            ),
            a(
                "For stores with less than six months of history we borrow the profile of the nearest store by square "
                "footage.",
                "How do we handle shops that opened recently and have little past data?",
                "square footage",
            ),
            u(
                "The warehouse cannot ship more than 4,000 pallets a week, that's a hard cap.",
                "What's the weekly capacity limit of the distribution side?",
                "4,000 pallets",
            ),
            a(
                "The cross-validation grid picked changepoint_prior_scale=0.05, so the trend stays fairly stiff.",
                "Which value did the tuning choose for how flexible the trend is?",
                "0.05",
            ),
        ),
    ),
    Theme(
        name="sensors",
        task="I'm detecting anomalies in the factory's sensor data here. Readings are in `sensor_df` (one row per "
        "sensor and timestamp); the aim is to warn maintenance before a machine breaks.",
        variables=("sensor_df", "iso_forest", "readings", "vib", "events"),
        columns=("sensor_id", "timestamp", "value", "line", "temperature", "pressure", "vibration"),
        models=("isolation forest", "autoencoder", "rolling z-score rule", "one-class SVM"),
        metrics=("precision", "false alarms per day", "detection delay", "recall", "F1"),
        domain=(
            "Temperature and pressure move together when the pump is under load.",
            "Maintenance would rather get one false alarm a day than miss a failure.",
            "The vibration sensors are mounted on the motor housing.",
            "Timestamps are stored in UTC but the shift plans are in local time.",
            "Line C was added last year and has less history than the others.",
            "Some gaps in the data come from network outages, not from the machines.",
            "A spike that lasts less than a second is usually electrical interference.",
            "The maintenance log records when a part was replaced.",
            "Failures are rare, so we have only a few dozen labelled incidents.",
            "The control room shows the alerts on a big screen.",
        ),
        facts=(
            u(
                "Note that the vibration sensors on line B report in mm/s, but line A reports in inches per second.",
                "What units does each production line use for the shaking measurements?",
                "inches per second",
            ),
            a(
                "Set contamination=0.003 in the IsolationForest: the maintenance logs suggest roughly three real faults "
                "per thousand readings.",
                "What expected outlier share did we configure for the tree-based detector?",
                "0.003",
            ),
            u(
                "Sensor T-44 has been broken since the firmware update of 2 May, ignore its spikes.",
                "Which thermometer should we not trust, and since when?",
                "T-44",
            ),
            a(
                "A 15-minute rolling median filter removes most of the electrical noise without hiding the real ramps.",
                "How did we smooth out the interference in the signals?",
                "median filter",
            ),
            u(
                "The plant stops every Sunday between 02:00 and 06:00 for cleaning, so expect flat lines then.",
                "When is the weekly shutdown?",
                "Sunday between 02:00",
            ),
            a(
                "The readings are sampled at 50 Hz, so one hour is 180,000 rows per sensor.",
                "How many measurements per second do we get?",
                "50 Hz",
            ),
            u(
                "An alert has to reach the on-call engineer within 90 seconds, otherwise it is useless.",
                "How quickly does a warning have to get to the person on duty?",
                "90 seconds",
            ),
            a(
                "Before the pump failure on 3 March the pressure started dropping about 40 minutes earlier.",
                "How much advance notice did the pressure signal give before the pump broke?",
                "40 minutes",
            ),
            u(
                "Please write the flagged events to the `anomaly_events` table in Postgres, schema `ops`.",
                "Where should the detected incidents be stored?",
                "anomaly_events",
            ),
            a(
                "The autoencoder's alarm threshold is the 99.5th percentile of the reconstruction error on the training "
                "weeks.",
                "How was the limit on the neural network's error chosen?",
                "99.5th percentile",
            ),
        ),
    ),
    Theme(
        name="trial",
        task="This notebook holds the statistical analysis of our phase II diabetes trial. Patient data is in "
        "`trial_df`, adverse events in `adverse`; I need tables for the study report.",
        variables=("trial_df", "adverse", "km_fit", "visits", "baseline"),
        columns=("patient_id", "arm", "visit", "hba1c", "age", "sex", "site"),
        models=("ANCOVA", "Kaplan-Meier estimate", "Cox model", "logistic model"),
        metrics=("p-value", "confidence interval", "hazard ratio", "effect size", "number needed to treat"),
        domain=(
            "The statistical analysis plan was signed before unblinding.",
            "Sites differ a lot in how many patients they enrolled.",
            "Baseline characteristics look balanced between the arms.",
            "Protocol deviations are listed in a separate spreadsheet.",
            "The regulators will want the tables in the standard format.",
            "Older patients had more visits outside the schedule.",
            "Lab values come from a central laboratory.",
            "Some patients changed their background medication during the study.",
            "The sponsor wants a short summary for the investigators' meeting.",
            "Subgroup analyses are exploratory only.",
        ),
        facts=(
            u(
                "Patients whose ID starts with 'X-' come from the pilot site and must be excluded from the efficacy "
                "analysis.",
                "Which participants are not counted when we measure whether the drug works?",
                "pilot site",
            ),
            a(
                "The primary endpoint is the change in HbA1c from baseline to week 26.",
                "What is the main outcome measure of the study?",
                "HbA1c from baseline to week 26",
            ),
            u(
                "Randomisation was 2:1, treatment to placebo, stratified by site.",
                "What was the allocation ratio between the arms?",
                "2:1",
            ),
            a(
                "Missing week-26 values are imputed by last observation carried forward, as the protocol requires, with "
                "multiple imputation as a sensitivity analysis.",
                "How do we deal with people who dropped out before the final visit?",
                "last observation carried forward",
            ),
            u(
                "The DSMB meets on 9 October and wants the interim tables a week before.",
                "When is the safety board meeting?",
                "9 October",
            ),
            a(
                "For the time to rescue medication the hazard ratio is 0.71 (95% CI 0.55 to 0.92).",
                "What was the effect estimate on how long until patients needed extra therapy?",
                "0.71",
            ),
            u(
                "Dr. Okafor is the medical monitor; any serious adverse event goes to her first.",
                "Who needs to hear about serious side effects first?",
                "Okafor",
            ),
            a(
                "For the repeated HbA1c measurements I'd fit an MMRM (mixed model for repeated measures) with an "
                "unstructured covariance.",
                "Which statistical approach did you propose for the values measured at every visit?",
                "MMRM",
            ),
            u(
                "In `adverse` the severity column is coded 1=mild, 2=moderate, 3=severe, 9=unknown.",
                "What does a value of nine mean in the grading of side effects?",
                "9=unknown",
            ),
            a(
                "We need 212 patients per arm for 90% power to detect a 0.4 point difference.",
                "How big does each group need to be?",
                "212 patients",
            ),
        ),
    ),
    Theme(
        name="abtest",
        task="I'm analysing the checkout A/B test in this notebook. Assignments are in `ab_df` and the tracking "
        "events in `events`; product wants to know whether to ship variant B.",
        variables=("ab_df", "events", "conv_rate", "boot", "users"),
        columns=("user_id", "variant", "converted", "revenue", "device", "country", "session_start"),
        models=("two-proportion z-test", "bootstrap", "Bayesian beta-binomial model", "regression adjustment"),
        metrics=("conversion rate", "revenue per user", "p-value", "average order value", "bounce rate"),
        domain=(
            "Mobile users convert less often than desktop users.",
            "The payment page is where most people abandon their basket.",
            "Returning customers make up about a third of the traffic.",
            "Product wants a clear recommendation, not just a p-value.",
            "The test was announced in the company newsletter.",
            "Traffic from paid campaigns behaves differently from organic traffic.",
            "Weekend traffic is higher but converts worse.",
            "Peeking at the results every day inflates the false positive rate.",
            "Some users saw both variants because they switched devices.",
            "Average order value is very skewed by a few large purchases.",
        ),
        facts=(
            u(
                "The experiment ran from 4 to 25 September, and variant B was the one-page checkout.",
                "What was different about the second arm of the experiment?",
                "one-page checkout",
            ),
            a(
                "The test was sized for a minimum detectable effect of 1.5 percentage points.",
                "What smallest lift was it designed to pick up?",
                "1.5 percentage points",
            ),
            u(
                "Bots are filtered with the `is_internal` flag and by user agents containing 'HeadlessChrome'.",
                "How do we remove automated traffic?",
                "HeadlessChrome",
            ),
            a(
                "There's a sample ratio mismatch: 50.9% of users landed in A and the chi-square p-value is 0.0004, so "
                "the split itself is broken.",
                "Was the division of visitors between the groups healthy?",
                "0.0004",
            ),
            u(
                "Revenue in `events` is stored in cents, not euros.",
                "What unit are the purchase amounts recorded in?",
                "cents",
            ),
            a(
                "With CUPED, using pre-period spend as the covariate, the variance drops by about 30%.",
                "Which variance reduction trick did we apply, and how much did it help?",
                "CUPED",
            ),
            u(
                "Legal says we may not keep user-level data for longer than 60 days.",
                "How long are we allowed to hold on to records about individual people?",
                "60 days",
            ),
            a(
                "The relative uplift in conversion is 2.1%, with a 95% interval from -0.3% to 4.6%, so it is not "
                "significant.",
                "Did the new flow clearly improve the purchase rate?",
                "2.1%",
            ),
            u(
                "App users are bucketed by device id, web users by cookie.",
                "What decides which group a phone user ends up in?",
                "device id",
            ),
            a(
                "There is a novelty effect: the gain was concentrated in the first 3 days and faded afterwards.",
                "Did the improvement last over the whole period?",
                "first 3 days",
            ),
        ),
    ),
    Theme(
        name="reviews",
        task="This notebook trains a sentiment classifier for product reviews. The texts are in `reviews`; the "
        "product team wants to track complaints per category.",
        variables=("reviews", "tokenizer_cfg", "clf", "val_preds", "label_map"),
        columns=("text", "stars", "category", "marketplace", "date", "helpful_votes", "language"),
        models=("fine-tuned DistilBERT", "TF-IDF logistic regression", "zero-shot classifier", "fastText model"),
        metrics=("macro F1", "accuracy", "confusion matrix", "precision", "calibration error"),
        domain=(
            "Long reviews often mix praise and complaints.",
            "Many reviews mention delivery rather than the product itself.",
            "Five-star reviews are by far the most common.",
            "Emojis carry a lot of the sentiment in short reviews.",
            "The product team reads a sample of misclassified reviews every week.",
            "Reviews with many helpful votes tend to be longer.",
            "Some sellers copy the same review on several products.",
            "The category labels come from the catalogue, not from the reviewer.",
            "Spelling mistakes are common in mobile reviews.",
            "The classifier runs nightly on the new reviews.",
        ),
        facts=(
            u(
                "The reviews come from three marketplaces, but the Polish ones were machine-translated, so don't trust "
                "them much.",
                "Which language subset is unreliable because it was auto-translated?",
                "Polish",
            ),
            a(
                "I'd truncate the inputs at 256 tokens: 97% of the reviews are shorter than that.",
                "What maximum input length did we settle on for the texts?",
                "256 tokens",
            ),
            u(
                "Labels: one or two stars is negative, three is neutral, four or five is positive.",
                "How are the ratings turned into sentiment classes?",
                "three is neutral",
            ),
            a(
                "On the validation split the macro F1 is 0.842; neutral is the weakest class with an F1 of 0.61.",
                "Which category does the classifier struggle with most?",
                "0.61",
            ),
            u(
                "The annotation guidelines are in Confluence under REV-LABEL-v3.",
                "Where can I find the instructions the labellers followed?",
                "REV-LABEL-v3",
            ),
            a(
                "A learning rate of 3e-5 with linear warm-up over the first 10% of steps worked best.",
                "Which optimiser settings gave the best fine-tuning result?",
                "3e-5",
            ),
            u(
                "We must not send review text to any external API, because of GDPR.",
                "Can we use a hosted service to process the comments?",
                "GDPR",
            ),
            a(
                "Sarcasm is the main source of false positives: 'great, it broke after a day' gets predicted as "
                "positive.",
                "What kind of text fools the model into an upbeat label it shouldn't give?",
                "Sarcasm",
            ),
            u(
                "The product team only cares about the 'Kitchen' and 'Garden' categories for now.",
                "Which product areas matter to the stakeholders?",
                "Kitchen",
            ),
            a(
                "Deduplicate with MinHash at Jaccard 0.9; about 4% of the reviews are near-copies.",
                "How did we remove repeated reviews, and how many were there?",
                "MinHash",
            ),
        ),
    ),
)
