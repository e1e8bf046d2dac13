// Nightly clone-and-compare: operations and validation must process the same telemetry to the same Main
// Database.
//
// Jenkins Job Builder includes this file verbatim in soc-pipeline-nightly-compare (jenkins/templates.yaml);
// INVENTORY, AGENT_LABEL and GIT_URL are choices with a single value, fixed by the job's definition.
//
//   Prepare   the playbooks of GIT_REF, the project's virtual environment, the inventory's vault.
//   Candidate with CANDIDATE_REF only (the release gate): ansible-playbook candidate.yml deploys that
//             revision's release on the validation host alone; operations keeps GIT_REF's. At the end,
//             whatever the result, candidate.yml puts GIT_REF's release back on validation.
//   Clone     ansible-playbook clone.yml -e clone_action=take: validation becomes a clone of operations.
//   Replay    ansible-playbook replay.yml: one simulated day delivered to both, ingested and reduced.
//   Compare   soc compare OPS_DSN VAL_DSN: checksums per table, rows where they differ; the HTML report
//             is published (and its JSON archived) whatever the result. Different: the build fails.
//
// The day: REPLAY_DATE, else the day after the one the last replaying build replayed, else
// FIRST_REPLAY_DATE; so each night brings new data, as each day does in operations.
// The DSNs of the two databases (as the soc_validation login, which reads operations and owns the clone)
// are Jenkins credentials (secret text): soc-INVENTORY-ops-dsn and soc-INVENTORY-validation-dsn.

// The day the last build that got through its replay replayed (it records SOC_REPLAYED_DATE), or null.
String lastReplayedDate() {
    def build = currentBuild.previousBuild
    while (build != null) {
        def day = build.buildVariables.SOC_REPLAYED_DATE
        if (day) {
            return day
        }
        build = build.previousBuild
    }
    return null
}

String replayDate() {
    if (params.REPLAY_DATE) {
        return params.REPLAY_DATE
    }
    def last = lastReplayedDate()
    if (last == null) {
        return params.FIRST_REPLAY_DATE
    }
    def next = null
    withEnv(["SOC_LAST_DATE=${last}"]) {
        next = sh(returnStdout: true, script: 'date -u -d "$SOC_LAST_DATE + 1 day" +%F').trim()
    }
    return next
}

// The sh step (same arguments) as make runs its commands: the project's virtual environment first on
// PATH, the repository's Ansible configuration.
def venvSh(Map args) {
    def result = null
    withEnv(["PATH+VENV=${env.WORKSPACE}/.venv/bin",
             "ANSIBLE_CONFIG=${env.WORKSPACE}/ansible/ansible.cfg",
             'ANSIBLE_FORCE_COLOR=1']) {
        result = sh(args)
    }
    return result
}

pipeline {
    agent { label params.AGENT_LABEL }
    options {
        timestamps()
        ansiColor('xterm')
        timeout(time: 3, unit: 'HOURS')
        lock(resource: "soc-topology-${params.INVENTORY}")
    }
    stages {
        stage('Prepare') {
            steps {
                checkout scmGit(branches: [[name: params.GIT_REF]], userRemoteConfigs: [[url: params.GIT_URL]])
                sh 'jenkins/scripts/prepare-workspace'
                sh 'make vault INVENTORY="ansible/inventories/$INVENTORY"'
                script {
                    env.SOC_REPLAY_DATE = replayDate()
                    if (!(env.SOC_REPLAY_DATE ==~ /\d{4}-\d{2}-\d{2}/)) {
                        error("not a day (YYYY-MM-DD): ${env.SOC_REPLAY_DATE}")
                    }
                    currentBuild.description = "${env.SOC_REPLAY_DATE} on ${params.INVENTORY}"
                }
            }
        }
        stage('Candidate') {
            when {
                expression { params.CANDIDATE_REF }
            }
            steps {
                script {
                    env.SOC_OPERATIONS_COMMIT = sh(returnStdout: true, script: 'git rev-parse HEAD').trim()
                    // the candidate's commit, if the checkout did not bring it
                    sh 'git cat-file -e "$CANDIDATE_REF^{commit}" || git fetch --no-tags origin "$CANDIDATE_REF"'
                    currentBuild.description += " (candidate ${params.CANDIDATE_REF.take(12)})"
                    venvSh script: '''cd ansible && ansible-playbook -i "inventories/$INVENTORY" candidate.yml \
                        -e candidate_revision="$CANDIDATE_REF"'''
                }
            }
        }
        stage('Clone') {
            steps {
                script {
                    venvSh script: 'cd ansible && ansible-playbook -i "inventories/$INVENTORY" clone.yml -e clone_action=take'
                }
            }
        }
        stage('Replay') {
            steps {
                script {
                    venvSh script: '''cd ansible && ansible-playbook -i "inventories/$INVENTORY" replay.yml \
                        -e replay_date="$SOC_REPLAY_DATE" -e replay_scale="$REPLAY_SCALE"'''
                    env.SOC_REPLAYED_DATE = env.SOC_REPLAY_DATE
                }
            }
        }
        stage('Compare') {
            steps {
                withCredentials([string(credentialsId: "soc-${params.INVENTORY}-ops-dsn", variable: 'OPS_DSN'),
                                 string(credentialsId: "soc-${params.INVENTORY}-validation-dsn", variable: 'VAL_DSN')]) {
                    script {
                        def status = venvSh(returnStatus: true, script: 'soc compare "$OPS_DSN" "$VAL_DSN" --no-progress ' +
                                            '--html reports/compare.html --json reports/compare.json')
                        if (status == 1) {
                            error("operations and validation differ after ${env.SOC_REPLAY_DATE}: see the Comparison report")
                        } else if (status != 0) {
                            error("soc compare failed (exit status ${status})")
                        }
                    }
                }
            }
        }
    }
    post {
        always {
            script {
                if (env.SOC_OPERATIONS_COMMIT) {  // validation back on operations' release
                    venvSh script: '''cd ansible && ansible-playbook -i "inventories/$INVENTORY" candidate.yml \
                        -e candidate_revision="$SOC_OPERATIONS_COMMIT"'''
                }
            }
            publishHTML(target: [reportName: 'Comparison', reportDir: 'reports', reportFiles: 'compare.html',
                                 keepAll: true, alwaysLinkToLastBuild: true, allowMissing: true])
            archiveArtifacts artifacts: 'reports/compare.*', allowEmptyArchive: true
        }
    }
}
