// Deploy: ansible-playbook PLAYBOOK on one inventory, checked first, then applied.
//
// Jenkins Job Builder includes this file verbatim in every soc-pipeline-deploy-INVENTORY job
// (jenkins/templates.yaml); the job's parameters carry what differs between them. INVENTORY, AGENT_LABEL
// and GIT_URL are choices with a single value: the job's definition fixes them, a build cannot.
//
//   Check     GIT_REF resolved to one commit; ansible-playbook --check --diff (its log is archived).
//   Approval  every inventory but the UNATTENDED ones: a release manager approves the check's diff. It
//             waits outside any agent (no executor is held); builds run concurrently, and a newer build
//             that gets past the approval aborts the older ones still waiting (milestone), so an older
//             commit is never applied over a newer one.
//   Apply     ansible-playbook --diff, on the commit that was checked.
// Check and Apply hold the lock soc-topology-INVENTORY (one job at a time on a deployment: the freestyle
// jobs that use the one-machine topology take soc-topology-local).
//
// The secrets: the unattended inventories' vaults are made on their agent (make vault); the others' vault
// password file and SSH key are Jenkins credentials soc-INVENTORY-vault-password (a secret file) and
// soc-INVENTORY-ssh (an SSH private key).

// The inventories deployed without a person's approval: the machines of CI and of developers.
UNATTENDED = ['local', 'vagrant']
// Who may approve (Jenkins user ids or groups, comma separated).
APPROVERS = 'soc-release-managers'

boolean attended() {
    return !(params.INVENTORY in UNATTENDED)
}

// The commit `ref` names, checked out into a workspace prepared as for every job.
String checkoutCommit(String ref) {
    def scmVars = checkout scmGit(branches: [[name: ref]], userRemoteConfigs: [[url: params.GIT_URL]])
    sh 'jenkins/scripts/prepare-workspace'
    return scmVars.GIT_COMMIT
}

// Runs body with the inventory's secrets and with Ansible from the project's virtual environment.
void withAnsible(String log, Closure body) {
    withEnv(["PATH+VENV=${env.WORKSPACE}/.venv/bin",
             "ANSIBLE_CONFIG=${env.WORKSPACE}/ansible/ansible.cfg",
             "ANSIBLE_LOG_PATH=${env.WORKSPACE}/reports/${log}",
             'ANSIBLE_FORCE_COLOR=1']) {
        if (attended()) {
            withCredentials([file(credentialsId: "soc-${params.INVENTORY}-vault-password",
                                  variable: 'ANSIBLE_VAULT_PASSWORD_FILE')]) {
                sshagent(credentials: ["soc-${params.INVENTORY}-ssh"]) {
                    body()
                }
            }
        } else {
            sh 'make vault INVENTORY="ansible/inventories/$INVENTORY"'
            body()
        }
    }
}

pipeline {
    agent none
    options {
        timestamps()
        ansiColor('xterm')
    }
    stages {
        stage('Check') {
            agent { label params.AGENT_LABEL }
            options {
                lock(resource: "soc-topology-${params.INVENTORY}")
                timeout(time: 1, unit: 'HOURS')
            }
            steps {
                script {
                    env.DEPLOY_COMMIT = checkoutCommit(params.GIT_REF)
                    currentBuild.description = "${params.PLAYBOOK} on ${params.INVENTORY} at ${env.DEPLOY_COMMIT.take(12)}"
                    if (!fileExists("ansible/inventories/${params.INVENTORY}")) {
                        error("no inventory ansible/inventories/${params.INVENTORY} in ${env.DEPLOY_COMMIT}")
                    }
                    withAnsible('deploy-check.log') {
                        sh 'cd ansible && ansible-playbook -i "inventories/$INVENTORY" "$PLAYBOOK" --check --diff'
                    }
                }
            }
            post {
                always {
                    archiveArtifacts artifacts: 'reports/deploy-check.log', allowEmptyArchive: true
                }
            }
        }
        stage('Approval') {
            when {
                expression { attended() }
            }
            steps {
                milestone(ordinal: 10, label: 'checked')
                timeout(time: 8, unit: 'HOURS') {
                    script {
                        def approver = input(
                            message: "Apply ${params.PLAYBOOK} to ${params.INVENTORY} at ${env.DEPLOY_COMMIT}? " +
                                     'Read the check\'s diff first: artifact reports/deploy-check.log.',
                            ok: 'Apply',
                            submitter: APPROVERS,
                            submitterParameter: 'APPROVER')
                        currentBuild.description += ", approved by ${approver}"
                    }
                }
                milestone(ordinal: 20, label: 'approved')
            }
        }
        stage('Apply') {
            agent { label params.AGENT_LABEL }
            options {
                lock(resource: "soc-topology-${params.INVENTORY}")
                timeout(time: 2, unit: 'HOURS')
            }
            steps {
                script {
                    def commit = checkoutCommit(env.DEPLOY_COMMIT)
                    if (commit != env.DEPLOY_COMMIT) {
                        error("checked ${env.DEPLOY_COMMIT} but checked out ${commit}")
                    }
                    withAnsible('deploy-apply.log') {
                        sh 'cd ansible && ansible-playbook -i "inventories/$INVENTORY" "$PLAYBOOK" --diff'
                    }
                }
            }
            post {
                always {
                    archiveArtifacts artifacts: 'reports/deploy-apply.log', allowEmptyArchive: true
                }
            }
        }
    }
}
